use byok::{AccountKey, AesKey, Envelope, PreparedKey};
fn main() {
    let k1 = PreparedKey::new("bench-account", &AccountKey::new("ak", 1, AesKey::from_bytes([1; 32])).unwrap()).unwrap();
    let env = Envelope::new(&k1);
    let pt = vec![0u8; 1024];
    let open = std::env::args().nth(1).is_some();
    let obj = env.seal(b"bench/object-name", &pt).unwrap();
    for _ in 0..1_000_000 {
        if open {
            std::hint::black_box(env.open(b"bench/object-name", std::hint::black_box(&obj)).unwrap());
        } else {
            std::hint::black_box(env.seal(b"bench/object-name", std::hint::black_box(&pt)).unwrap());
        }
    }
}
