//! A cheaper read of the common response head: when no response header is kept, a response
//! needs only its status line and the framing facts of its headers. This scan takes a strict
//! subset of what `httparse` accepts (status line `HTTP/1.0` or `HTTP/1.1`, a code from 100 to
//! 599 and a non-empty printable reason; header lines ending in CRLF whose bytes are printable
//! ASCII, no tab, no obsolete line folding, no trailing whitespace; the whole head in `bytes`)
//! and gives up on anything else, leaving it to the full parse: on the heads it takes, the result
//! is the full parse's (the `head_scan` fuzz target compares both on the same bytes).

use super::framing::FramingHeaders;

/// What the scan read from a complete response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScannedResponse {
    /// The head's length, its final CRLF included.
    pub len: usize,
    /// The HTTP/1 minor version (0 or 1).
    pub minor: u8,
    pub status: u16,
    pub framing: FramingHeaders,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether `b` is one of the bytes the scan stops at: a control byte (CR and LF among them), DEL
/// or above, or the colon.
#[inline]
fn is_stop(b: u8) -> bool {
    !(0x20..=0x7E).contains(&b) || b == b':'
}

/// The first stop byte at or after `from`, eight bytes per step (the lowest byte flagged by the
/// word tests is always a true one: borrows and carries only run upwards).
#[inline]
fn next_stop(bytes: &[u8], mut from: usize) -> Option<usize> {
    while let Some(chunk) = bytes.get(from..from + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        let high = x.wrapping_add(ONES) | x;
        let y = x ^ (ONES * u64::from(b':'));
        let colon = y.wrapping_sub(ONES) & !y;
        let flags = (control | high | colon) & HIGHS;
        if flags != 0 {
            return Some(from + (flags.trailing_zeros() / 8) as usize);
        }
        from += 8;
    }
    let rest = bytes.get(from..)?;
    rest.iter().position(|&b| is_stop(b)).map(|i| from + i)
}

/// Reads a complete, strictly formed response head at the start of `bytes`; `None` when the
/// head is anything else (incomplete, malformed, or merely unusual).
pub(crate) fn scan(bytes: &[u8]) -> Option<ScannedResponse> {
    let status_line = bytes.get(..13)?;
    let (prefix, rest) = status_line.split_at(7);
    if prefix != b"HTTP/1." {
        return None;
    }
    let minor = match rest {
        [b'0', b' ', ..] => 0,
        [b'1', b' ', ..] => 1,
        _ => return None,
    };
    let status = match rest.get(2..6)? {
        [h @ b'1'..=b'5', t @ b'0'..=b'9', u @ b'0'..=b'9', b' '] => {
            u16::from(h - b'0') * 100 + u16::from(t - b'0') * 10 + u16::from(u - b'0')
        }
        _ => return None,
    };
    let mut framing = FramingHeaders::default();
    // The line being read starts at `line`; `colon` is its first colon; the status line's
    // reason (non-empty) may hold colons.
    let mut line = 13;
    let mut colon = None;
    let mut in_status = true;
    let mut at = line;
    loop {
        let stop = next_stop(bytes, at)?;
        match bytes.get(stop)? {
            b':' => {
                if colon.is_none() && !in_status {
                    colon = Some(stop);
                }
                at = stop + 1;
            }
            b'\r' => {
                if bytes.get(stop + 1) != Some(&b'\n') {
                    return None;
                }
                let text = bytes.get(line..stop)?;
                if in_status {
                    if text.is_empty() {
                        return None;
                    }
                    in_status = false;
                } else if text.is_empty() {
                    return Some(ScannedResponse {
                        len: stop + 2,
                        minor,
                        status,
                        framing,
                    });
                } else {
                    // No space first (a folded line) or last (trailing whitespace); a name the
                    // full parse takes as it is, or skips as invalid (a space inside it), naming
                    // no framing header either way (a space before the colon would be trimmed).
                    let colon = colon?;
                    let name = bytes.get(line..colon)?;
                    let value = bytes.get(colon + 1..stop)?;
                    if text.first() == Some(&b' ')
                        || text.last() == Some(&b' ')
                        || name.is_empty()
                        || name.last() == Some(&b' ')
                    {
                        return None;
                    }
                    let start = value.iter().position(|&b| b != b' ')?;
                    framing.observe_bytes(name, value.get(start..)?);
                }
                line = stop + 2;
                at = line;
                colon = None;
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::http1::framing::{ContentLength, TransferCoding};

    #[test]
    fn reads_a_common_head() {
        let head = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\nContent-Length: 612\r\nConnection: keep-alive\r\n\r\nbody";
        let scanned = scan(head).expect("a strict head");
        assert_eq!(scanned.len, head.len() - 4);
        assert_eq!((scanned.minor, scanned.status), (1, 200));
        assert_eq!(scanned.framing.content_length, ContentLength::Valid(612));
        let chunked = scan(b"HTTP/1.0 404 Not Found\r\ntransfer-encoding: gzip, chunked\r\n\r\n")
            .expect("a strict head");
        assert_eq!((chunked.minor, chunked.status), (0, 404));
        assert_eq!(chunked.framing.transfer_coding, TransferCoding::Chunked);
    }

    #[test]
    fn leaves_unusual_heads_to_the_full_parse() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"[..],
            b"HTTP/1.1 200 OK\nContent-Length: 5\n\n",
            b"HTTP/1.1 200\r\n\r\n",
            b"HTTP/1.1 200 \r\n\r\n",
            b"HTTP/1.2 200 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 099 Odd\r\n\r\n",
            b"HTTP/1.1 600 Odd\r\n\r\n",
            b"HTTP/1.1 20x OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length:\t5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5 \r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: \x7f\r\n\r\n",
            b"\r\nHTTP/1.1 200 OK\r\n\r\n",
        ] {
            assert_eq!(scan(head), None, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn the_word_test_finds_the_first_stop_byte() {
        for first in 0..=255u8 {
            for second in [b'a', b':', b'\r', 0xFF] {
                for at in 0..11 {
                    let mut bytes = [b'a'; 19];
                    bytes[at] = first;
                    bytes[at + 3] = second;
                    let expected = bytes.iter().position(|&b| is_stop(b));
                    assert_eq!(next_stop(&bytes, 0), expected, "{first:#x} at {at}");
                    assert_eq!(
                        next_stop(&bytes, 1),
                        bytes[1..].iter().position(|&b| is_stop(b)).map(|i| i + 1),
                        "{first:#x} at {at}, from 1"
                    );
                }
            }
        }
    }

    /// Every one-byte change and every cut of a few heads: whatever the scan takes, the full
    /// parse reads the same way (the `head_scan` fuzz target does this on arbitrary bytes).
    #[test]
    fn the_scan_agrees_with_the_full_parse_on_changed_heads() {
        let heads: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 21 Nov 2025 17:00:00 GMT\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n",
            b"HTTP/1.0 204 No Content\r\nTransfer-Encoding: chunked\r\ncontent-length: 3, 3\r\n\r\n",
            b"HTTP/1.1 301 Moved: here\r\nLocation: http://a:80/b\r\nX:y\r\n\r\n",
        ];
        let mut taken = 0;
        for head in heads {
            assert!(scan(head).is_some(), "{:?}", String::from_utf8_lossy(head));
            for cut in 0..=head.len() {
                crate::protocols::http1::head::fuzz_response_scan(&head[..cut]);
            }
            for at in 0..head.len() {
                for byte in [
                    b' ', b':', b'\r', b'\n', b'\t', 0x7F, 0x80, b'0', b'9', b'a', 0,
                ] {
                    let mut changed = head.to_vec();
                    changed[at] = byte;
                    taken += usize::from(scan(&changed).is_some());
                    crate::protocols::http1::head::fuzz_response_scan(&changed);
                }
            }
        }
        assert!(taken > 100, "the scan took only {taken} changed heads");
    }
}
