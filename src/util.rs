//! Small helpers shared across modules.

/// Lower-case hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

/// Parses hex (either case); `None` on odd length or a non-hex digit.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// Polls every future until all are done (concurrency without assuming a runtime; the
/// conformance suites use it).
#[cfg(any(test, feature = "testing"))]
pub(crate) struct JoinAll<'a, T>(
    Vec<Option<core::pin::Pin<Box<dyn core::future::Future<Output = T> + Send + 'a>>>>,
    Vec<Option<T>>,
);

#[cfg(any(test, feature = "testing"))]
impl<'a, T> JoinAll<'a, T> {
    pub(crate) fn new(
        futures: Vec<core::pin::Pin<Box<dyn core::future::Future<Output = T> + Send + 'a>>>,
    ) -> Self {
        let n = futures.len();
        Self(
            futures.into_iter().map(Some).collect(),
            (0..n).map(|_| None).collect(),
        )
    }
}

#[cfg(any(test, feature = "testing"))]
impl<T> core::future::Future for JoinAll<'_, T> {
    type Output = Vec<T>;
    fn poll(
        self: core::pin::Pin<&mut Self>,
        cx: &mut core::task::Context<'_>,
    ) -> core::task::Poll<Vec<T>> {
        let this = self.get_mut();
        let mut pending = false;
        for (slot, out) in this.0.iter_mut().zip(this.1.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    core::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    core::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            core::task::Poll::Pending
        } else {
            core::task::Poll::Ready(this.1.drain(..).flatten().collect())
        }
    }
}

#[cfg(any(test, feature = "testing"))]
impl<T> Unpin for JoinAll<'_, T> {}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trip() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(super::hex(&b), "0001abff");
        assert_eq!(super::unhex("0001ABff").as_deref(), Some(&b[..]));
        assert_eq!(super::unhex("0"), None);
        assert_eq!(super::unhex("zz"), None);
    }
}
