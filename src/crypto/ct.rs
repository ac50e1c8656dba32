//! Constant-time comparisons (the only users of `subtle` in the crate).

use subtle::ConstantTimeEq;

/// Whether `a == b`, in time that depends only on the lengths.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Whether two 32-byte values (MACs, commitments, fingerprints) are equal, in constant time:
/// branch-free accumulation over 64-bit words and one `subtle` comparison at the end (cheaper
/// than `subtle`'s byte-wise slice comparison, which puts an optimisation barrier on every
/// byte; this runs once per object opened).
pub(crate) fn ct_eq_32(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u64;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let mut xa = [0u8; 8];
        let mut ya = [0u8; 8];
        xa.copy_from_slice(x);
        ya.copy_from_slice(y);
        diff |= u64::from_le_bytes(xa) ^ u64::from_le_bytes(ya);
    }
    bool::from(diff.ct_eq(&0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_see_every_byte() {
        let a = [7u8; 32];
        for i in 0..32 {
            let mut b = a;
            b[i] ^= 1;
            assert!(!ct_eq_32(&a, &b), "byte {i}");
            assert!(!ct_eq(&a, &b), "byte {i}");
        }
        assert!(ct_eq_32(&a, &a) && ct_eq(&a, &a));
        assert!(!ct_eq(&a, &a[..31]));
    }
}
