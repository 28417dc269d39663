//! Message body length rules (RFC 9112 section 6): from the framing headers of a head, and for
//! responses the request method and status, decide how the body ends.

/// What the `Content-Length` headers of a message say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ContentLength {
    #[default]
    Absent,
    Valid(u64),
    /// Unparseable, or several headers that disagree.
    Invalid,
}

/// What the `Transfer-Encoding` headers of a message say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TransferCoding {
    #[default]
    Absent,
    /// `chunked` is the final coding.
    Chunked,
    /// Some other final coding.
    Other,
}

/// The header facts that decide body framing, gathered from every header of a head (also those
/// beyond the kept-headers limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FramingHeaders {
    pub content_length: ContentLength,
    pub transfer_coding: TransferCoding,
}

impl FramingHeaders {
    /// Takes one header into account.
    pub fn observe(&mut self, name: &str, value: &[u8]) {
        self.observe_bytes(name.as_bytes(), value);
    }

    /// [`observe`](Self::observe) for a name as bytes.
    #[inline]
    pub fn observe_bytes(&mut self, name: &[u8], value: &[u8]) {
        // Compare lengths first: this runs for every header of every message.
        const CONTENT_LENGTH: &str = "content-length";
        const TRANSFER_ENCODING: &str = "transfer-encoding";
        if name.len() == CONTENT_LENGTH.len()
            && name.eq_ignore_ascii_case(CONTENT_LENGTH.as_bytes())
        {
            self.content_length = match (self.content_length, parse_content_length(value)) {
                (ContentLength::Absent, Some(n)) => ContentLength::Valid(n),
                (ContentLength::Valid(a), Some(b)) if a == b => ContentLength::Valid(a),
                _ => ContentLength::Invalid,
            };
        } else if name.len() == TRANSFER_ENCODING.len()
            && name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_bytes())
            && let Some(last) = last_list_element(value)
        {
            self.transfer_coding = if last.eq_ignore_ascii_case(b"chunked") {
                TransferCoding::Chunked
            } else {
                TransferCoding::Other
            };
        }
    }
}

/// How a message body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body: the message ends with its head.
    Empty,
    /// Exactly this many bytes (never zero: zero is `Empty`).
    Length(u64),
    Chunked,
    /// The body runs until the connection closes.
    UntilClose,
    /// The connection leaves HTTP after this head (CONNECT tunnel established).
    Tunnel,
    /// The framing headers are contradictory or malformed: the stream cannot be followed.
    Invalid,
}

/// Facts about the request that shape its response's framing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestMethod {
    pub is_head: bool,
    pub is_connect: bool,
}

impl RequestMethod {
    pub fn of(method: &str) -> Self {
        RequestMethod {
            is_head: method == "HEAD",
            is_connect: method == "CONNECT",
        }
    }
}

/// Body framing of a request.
pub(crate) fn request_framing(headers: &FramingHeaders) -> BodyFraming {
    match headers.transfer_coding {
        TransferCoding::Chunked => return BodyFraming::Chunked,
        TransferCoding::Other => return BodyFraming::Invalid,
        TransferCoding::Absent => {}
    }
    match headers.content_length {
        ContentLength::Absent | ContentLength::Valid(0) => BodyFraming::Empty,
        ContentLength::Valid(n) => BodyFraming::Length(n),
        ContentLength::Invalid => BodyFraming::Invalid,
    }
}

/// Body framing of a final or interim response to a request made with `method`.
pub(crate) fn response_framing(
    headers: &FramingHeaders,
    status: u16,
    method: RequestMethod,
) -> BodyFraming {
    if method.is_connect && (200..300).contains(&status) {
        return BodyFraming::Tunnel;
    }
    if method.is_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return BodyFraming::Empty;
    }
    match headers.transfer_coding {
        TransferCoding::Chunked => return BodyFraming::Chunked,
        TransferCoding::Other => return BodyFraming::UntilClose,
        TransferCoding::Absent => {}
    }
    match headers.content_length {
        ContentLength::Absent => BodyFraming::UntilClose,
        ContentLength::Valid(0) => BodyFraming::Empty,
        ContentLength::Valid(n) => BodyFraming::Length(n),
        ContentLength::Invalid => BodyFraming::Invalid,
    }
}

/// A `Content-Length` value: digits, or a comma list of identical digit strings.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut agreed = None;
    for element in value.split(|&b| b == b',') {
        let digits = trim_ows(element);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits.iter().try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        match agreed {
            Some(previous) if previous != n => return None,
            _ => agreed = Some(n),
        }
    }
    agreed
}

/// The last non-empty element of a comma-separated header value.
fn last_list_element(value: &[u8]) -> Option<&[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .rfind(|e| !e.is_empty())
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |p| p + 1);
    bytes.get(start..end).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> FramingHeaders {
        let mut facts = FramingHeaders::default();
        for (name, value) in list {
            facts.observe(name, value.as_bytes());
        }
        facts
    }

    #[test]
    fn content_length_forms() {
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b" 7 , 7"), Some(7));
        assert_eq!(parse_content_length(b"7, 8"), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"99999999999999999999999"), None);
        assert_eq!(
            headers(&[("Content-Length", "3"), ("content-length", "3")]).content_length,
            ContentLength::Valid(3)
        );
        assert_eq!(
            headers(&[("Content-Length", "3"), ("content-length", "4")]).content_length,
            ContentLength::Invalid
        );
    }

    #[test]
    fn request_rules() {
        assert_eq!(request_framing(&headers(&[])), BodyFraming::Empty);
        assert_eq!(
            request_framing(&headers(&[("Content-Length", "0")])),
            BodyFraming::Empty
        );
        assert_eq!(
            request_framing(&headers(&[("Content-Length", "5")])),
            BodyFraming::Length(5)
        );
        let both = headers(&[
            ("Content-Length", "5"),
            ("Transfer-Encoding", "gzip, Chunked"),
        ]);
        assert_eq!(request_framing(&both), BodyFraming::Chunked);
        assert_eq!(
            request_framing(&headers(&[("Transfer-Encoding", "chunked, gzip")])),
            BodyFraming::Invalid
        );
        assert_eq!(
            request_framing(&headers(&[("Content-Length", "x")])),
            BodyFraming::Invalid
        );
    }

    #[test]
    fn response_rules() {
        let get = RequestMethod::of("GET");
        let with_length = headers(&[("Content-Length", "10")]);
        assert_eq!(
            response_framing(&with_length, 200, get),
            BodyFraming::Length(10)
        );
        assert_eq!(
            response_framing(&with_length, 200, RequestMethod::of("HEAD")),
            BodyFraming::Empty
        );
        assert_eq!(response_framing(&with_length, 204, get), BodyFraming::Empty);
        assert_eq!(response_framing(&with_length, 304, get), BodyFraming::Empty);
        assert_eq!(response_framing(&with_length, 100, get), BodyFraming::Empty);
        assert_eq!(
            response_framing(&headers(&[]), 200, get),
            BodyFraming::UntilClose
        );
        assert_eq!(
            response_framing(&headers(&[("Transfer-Encoding", "gzip")]), 200, get),
            BodyFraming::UntilClose
        );
        assert_eq!(
            response_framing(&headers(&[("Transfer-Encoding", "chunked")]), 500, get),
            BodyFraming::Chunked
        );
        assert_eq!(
            response_framing(&headers(&[]), 200, RequestMethod::of("CONNECT")),
            BodyFraming::Tunnel
        );
        assert_eq!(
            response_framing(&headers(&[]), 407, RequestMethod::of("CONNECT")),
            BodyFraming::UntilClose
        );
    }
}
