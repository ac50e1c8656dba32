//! Stub (replaced below).
fn main() {}
