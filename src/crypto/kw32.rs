//! AES key wrap (RFC 3394) of 32-byte keys — the envelope's data keys — with the wrap state in
//! registers, run inside one call of the cipher's backend (part of the RustCrypto backend).
//!
//! `aes-kw` wraps any length through a byte buffer; each of its 24 steps stores half a block
//! and reloads the whole, which stalls store-to-load forwarding. Here `A` and `R[1..4]` are
//! `u64`s and every step is one AES call plus a few register operations. Measured with
//! criterion on the 2-core CI machine kind, `aes-kw` 0.3.1 in the same group: a wrap or unwrap
//! takes ≈ 0.45 µs against ≈ 0.76–0.79 µs, close to the 24 dependent AES blocks alone
//! (≈ 0.40 µs); [`wrap_many`] runs several independent wraps step by step so that their AES
//! calls overlap in the pipeline (eight in ≈ 0.64 µs). `benches/envelope.rs` shows the effect
//! end to end. `aes-kw` stays in use for every other length and for RFC 5649; tests check the
//! two agree (RFC 3394 §4.6, Wycheproof, every bit flip, random keys).
//!
//! Byte order: a block is `A || R[i]`. The state holds each 8-byte half as a native-endian
//! `u64` of its bytes, so building and splitting blocks costs no byte swap; only the step
//! counter `t`, which RFC 3394 XORs into `A` as a big-endian integer, is converted.

use aes_kw::cipher::typenum::U16;
use aes_kw::cipher::{
    Array, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser,
};
use zeroize::Zeroize;

/// The RFC 3394 default initial value `A6A6A6A6A6A6A6A6`.
const IV: u64 = u64::from_ne_bytes([0xA6; 8]);
/// 64-bit blocks in a 32-byte key.
const N: usize = 4;

/// `t = n·j + i` (RFC 3394 §2.2.1, 1-based `i`) as the native-endian image of its big-endian
/// bytes.
#[inline(always)]
fn step(j: usize, i: usize) -> u64 {
    u64::from_ne_bytes(((N * j + i + 1) as u64).to_be_bytes())
}

#[inline(always)]
fn block(a: u64, r: u64) -> Array<u8, U16> {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&a.to_ne_bytes());
    b[8..].copy_from_slice(&r.to_ne_bytes());
    Array::from(b)
}

/// The `u64` of 8 bytes.
#[inline(always)]
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_ne_bytes(w)
}

#[inline(always)]
fn halves(b: &Array<u8, U16>) -> (u64, u64) {
    (word(&b[..8]), word(&b[8..]))
}

/// The four words of 32 bytes.
fn load(bytes: &[u8]) -> [u64; N] {
    core::array::from_fn(|i| word(&bytes[8 * i..8 * i + 8]))
}

fn store(r: &[u64; N], out: &mut [u8]) {
    for (o, x) in out.chunks_exact_mut(8).zip(r) {
        o.copy_from_slice(&x.to_ne_bytes());
    }
}

/// The wrapping function W of RFC 3394 on `K` independent states at once.
struct Wrap<'a, const K: usize> {
    a: &'a mut [u64; K],
    r: &'a mut [[u64; N]; K],
}

impl<const K: usize> BlockSizeUser for Wrap<'_, K> {
    type BlockSize = U16;
}

impl<const K: usize> BlockCipherEncClosure for Wrap<'_, K> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        for j in 0..6 {
            for i in 0..N {
                let t = step(j, i);
                // The K wraps are independent: their AES calls overlap in the pipeline.
                for (a, r) in self.a.iter_mut().zip(self.r.iter_mut()) {
                    let mut b = block(*a, r[i]);
                    backend.encrypt_block((&mut b).into());
                    let (hi, lo) = halves(&b);
                    *a = hi ^ t;
                    r[i] = lo;
                }
            }
        }
    }
}

/// The unwrapping function W⁻¹ of RFC 3394 on one state.
struct Unwrap<'a> {
    a: &'a mut u64,
    r: &'a mut [u64; N],
}

impl BlockSizeUser for Unwrap<'_> {
    type BlockSize = U16;
}

impl BlockCipherDecClosure for Unwrap<'_> {
    #[inline(always)]
    fn call<B: BlockCipherDecBackend<BlockSize = U16>>(self, backend: &B) {
        for j in (0..6).rev() {
            for i in (0..N).rev() {
                let mut b = block(*self.a ^ step(j, i), self.r[i]);
                backend.decrypt_block((&mut b).into());
                let (hi, lo) = halves(&b);
                *self.a = hi;
                self.r[i] = lo;
            }
        }
    }
}

/// Wraps `K` 32-byte keys under `cipher`, interleaved.
pub(super) fn wrap_many<C, const K: usize>(cipher: &C, keys: &[[u8; 32]; K]) -> [[u8; 40]; K]
where
    C: BlockCipherEncrypt<BlockSize = U16>,
{
    let mut a = [IV; K];
    let mut r = [[0u64; N]; K];
    for (r, key) in r.iter_mut().zip(keys) {
        *r = load(key);
    }
    cipher.encrypt_with_backend(Wrap {
        a: &mut a,
        r: &mut r,
    });
    let mut out = [[0u8; 40]; K];
    for ((o, a), r) in out.iter_mut().zip(a).zip(&r) {
        o[..8].copy_from_slice(&a.to_ne_bytes());
        store(r, &mut o[8..]);
    }
    out
}

/// Unwraps a 40-byte RFC 3394 blob into `out`; `false` (and `out` zeroed) if the integrity
/// check fails.
pub(super) fn unwrap<C>(cipher: &C, wrapped: &[u8; 40], out: &mut [u8; 32]) -> bool
where
    C: BlockCipherDecrypt<BlockSize = U16>,
{
    let mut a = word(&wrapped[..8]);
    let mut r = load(&wrapped[8..]);
    cipher.decrypt_with_backend(Unwrap {
        a: &mut a,
        r: &mut r,
    });
    let ok = a == IV;
    if ok {
        store(&r, out);
    } else {
        out.zeroize();
    }
    r.zeroize();
    ok
}
