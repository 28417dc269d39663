//! Recognition of HTTP/1.x start lines in raw bytes: decides where a message may begin, both where
//! one is expected and when searching forward after garbage or a capture gap.

/// Which start lines a stream accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Accept {
    pub requests: bool,
    pub responses: bool,
}

impl Accept {
    pub const REQUESTS: Accept = Accept {
        requests: true,
        responses: false,
    };
    pub const RESPONSES: Accept = Accept {
        requests: false,
        responses: true,
    };
    pub const BOTH: Accept = Accept {
        requests: true,
        responses: true,
    };
}

/// The two kinds of HTTP/1.x message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessageKind {
    Request,
    Response,
}

/// What the bytes at a position look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartLine {
    /// A complete, plausible start line of this kind.
    Message(MessageKind),
    /// The HTTP/2 connection preface (`PRI * HTTP/2.0`).
    Http2Preface,
    /// Every byte so far fits a start line, but the bytes end before it is decided.
    Partial,
    /// Not a start line.
    NotStart,
}

/// Longest request method accepted as plausible.
const MAX_METHOD_LEN: usize = 32;
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
const HTTP1_VERSION_PREFIX: &[u8] = b"HTTP/1.";

/// Outcome of matching one pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Match,
    Partial,
    No,
}

/// Classifies the bytes at the start of `bytes`. `max_target` bounds the request target length.
pub(crate) fn classify(bytes: &[u8], accept: Accept, max_target: usize) -> StartLine {
    let mut partial = false;
    if accept.requests {
        match literal(bytes, 0, HTTP2_PREFACE) {
            Verdict::Match => return StartLine::Http2Preface,
            Verdict::Partial => partial = true,
            Verdict::No => {}
        }
        match request_line(bytes, max_target) {
            Verdict::Match => return StartLine::Message(MessageKind::Request),
            Verdict::Partial => partial = true,
            Verdict::No => {}
        }
    }
    if accept.responses {
        match status_line(bytes) {
            Verdict::Match => return StartLine::Message(MessageKind::Response),
            Verdict::Partial => partial = true,
            Verdict::No => {}
        }
    }
    if partial {
        StartLine::Partial
    } else {
        StartLine::NotStart
    }
}

/// The first position at or after `from` where a start line (or a partial one running to the
/// end of `bytes`) begins, with its classification.
pub(crate) fn find_start(
    bytes: &[u8],
    from: usize,
    accept: Accept,
    max_target: usize,
) -> Option<(usize, StartLine)> {
    let tail = bytes.get(from..)?;
    let mut previous = from.checked_sub(1).and_then(|at| bytes.get(at)).copied();
    tail.iter().enumerate().find_map(|(offset, &first)| {
        // A method must not start in the middle of a token ("ET" inside "GET").
        let after_token = previous.is_some_and(is_tchar);
        previous = Some(first);
        let candidate = (accept.requests && is_tchar(first) && !after_token)
            || (accept.responses && first == b'H');
        if !candidate {
            return None;
        }
        let rest = tail.get(offset..)?;
        match classify(rest, accept, max_target) {
            StartLine::NotStart => None,
            found => Some((from + offset, found)),
        }
    })
}

/// `method SP target SP HTTP/1.[01] (CR|LF)`.
fn request_line(bytes: &[u8], max_target: usize) -> Verdict {
    let mut at = 0;
    loop {
        match bytes.get(at) {
            None => return Verdict::Partial,
            Some(b' ') if at > 0 => break,
            Some(&b) if is_tchar(b) && at < MAX_METHOD_LEN => at += 1,
            Some(_) => return Verdict::No,
        }
    }
    at += 1;
    let target_start = at;
    loop {
        match bytes.get(at) {
            None => return Verdict::Partial,
            Some(b' ') if at > target_start => break,
            Some(&b) if is_target_byte(b) && at - target_start < max_target => at += 1,
            Some(_) => return Verdict::No,
        }
    }
    at += 1;
    version_then(bytes, at, |b| b == b'\r' || b == b'\n')
}

/// `HTTP/1.[01] SP DIGIT DIGIT DIGIT (SP|CR|LF)`.
fn status_line(bytes: &[u8]) -> Verdict {
    match version_then(bytes, 0, |b| b == b' ') {
        Verdict::Match => {}
        other => return other,
    }
    let code_start = HTTP1_VERSION_PREFIX.len() + 2;
    for at in code_start..code_start + 3 {
        match bytes.get(at) {
            None => return Verdict::Partial,
            Some(b) if b.is_ascii_digit() => {}
            Some(_) => return Verdict::No,
        }
    }
    match bytes.get(code_start + 3) {
        None => Verdict::Partial,
        Some(b' ' | b'\r' | b'\n') => Verdict::Match,
        Some(_) => Verdict::No,
    }
}

/// `HTTP/1.[01]` at `at`, followed by a byte accepted by `after`.
fn version_then(bytes: &[u8], at: usize, after: impl Fn(u8) -> bool) -> Verdict {
    match literal(bytes, at, HTTP1_VERSION_PREFIX) {
        Verdict::Match => {}
        other => return other,
    }
    let minor = at + HTTP1_VERSION_PREFIX.len();
    match bytes.get(minor) {
        None => return Verdict::Partial,
        Some(b'0' | b'1') => {}
        Some(_) => return Verdict::No,
    }
    match bytes.get(minor + 1) {
        None => Verdict::Partial,
        Some(&b) if after(b) => Verdict::Match,
        Some(_) => Verdict::No,
    }
}

/// Whether `lit` is at `at` in `bytes` (`Partial` when `bytes` ends inside a matching prefix).
fn literal(bytes: &[u8], at: usize, lit: &[u8]) -> Verdict {
    let available = bytes.get(at..).unwrap_or(&[]);
    let n = available.len().min(lit.len());
    if available.get(..n) != lit.get(..n) {
        Verdict::No
    } else if n < lit.len() {
        Verdict::Partial
    } else {
        Verdict::Match
    }
}

/// RFC 9110 `tchar`: the bytes a method token may contain.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Bytes a request target may contain (visible ASCII, or non-ASCII as lenient parsers allow).
fn is_target_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    #[test]
    fn recognises_request_and_status_lines() {
        let request = StartLine::Message(MessageKind::Request);
        let response = StartLine::Message(MessageKind::Response);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n", Accept::BOTH, MAX), request);
        assert_eq!(
            classify(b"M-SEARCH * HTTP/1.1\n", Accept::BOTH, MAX),
            request
        );
        assert_eq!(
            classify(b"HTTP/1.0 404 Not Found\r\n", Accept::BOTH, MAX),
            response
        );
        assert_eq!(classify(b"HTTP/1.1 204\r\n", Accept::BOTH, MAX), response);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n", Accept::BOTH, MAX),
            StartLine::Http2Preface
        );
    }

    #[test]
    fn prefixes_are_partial_and_mismatches_are_not_starts() {
        let full = b"POST /submit?x=1 HTTP/1.1\r\n";
        for end in 0..full.len() - 1 {
            assert_eq!(
                classify(&full[..end], Accept::REQUESTS, MAX),
                StartLine::Partial,
                "{end}"
            );
        }
        assert_eq!(
            classify(b"GET / HTTP/2.0\r\n", Accept::BOTH, MAX),
            StartLine::NotStart
        );
        assert_eq!(
            classify(b"GET  / HTTP/1.1\r\n", Accept::BOTH, MAX),
            StartLine::NotStart
        );
        assert_eq!(
            classify(b"HTTP/1.1 20x OK\r\n", Accept::BOTH, MAX),
            StartLine::NotStart
        );
        assert_eq!(
            classify(b"\x16\x03\x01\x02", Accept::BOTH, MAX),
            StartLine::NotStart
        );
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\n", Accept::RESPONSES, MAX),
            StartLine::NotStart
        );
        assert_eq!(
            classify(b"HTTP/1.1 200 OK\r\n", Accept::REQUESTS, MAX),
            StartLine::NotStart
        );
        assert_eq!(
            classify(b"GET /toolong HTTP/1.1\r\n", Accept::REQUESTS, 4),
            StartLine::NotStart
        );
    }

    #[test]
    fn finds_start_after_garbage() {
        let bytes = b"\x00\xffgarbage words here HTTP/1.1 200 OK\r\n";
        let found = find_start(bytes, 0, Accept::RESPONSES, MAX);
        assert_eq!(found, Some((21, StartLine::Message(MessageKind::Response))));
        let bytes = b"}\"}]GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
        let found = find_start(bytes, 0, Accept::REQUESTS, MAX);
        assert_eq!(found, Some((4, StartLine::Message(MessageKind::Request))));
        assert_eq!(find_start(b"no http here.\n", 0, Accept::BOTH, MAX), None);
        assert_eq!(
            find_start(b"no http here.", 0, Accept::BOTH, MAX),
            Some((3, StartLine::Partial))
        );
        assert_eq!(
            find_start(b"GET /x HTTP/1.1\r\n", 1, Accept::BOTH, MAX),
            None
        );
        let glued = b"okHTTP/1.1 200 OK\r\n";
        let found = find_start(glued, 0, Accept::BOTH, MAX);
        assert_eq!(found, Some((2, StartLine::Message(MessageKind::Response))));
        assert_eq!(
            find_start(b"xx\r\nGE", 0, Accept::BOTH, MAX),
            Some((4, StartLine::Partial))
        );
        assert_eq!(find_start(b"abc", 10, Accept::BOTH, MAX), None);
    }
}
