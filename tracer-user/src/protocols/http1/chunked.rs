//! Incremental, allocation-free follower of a `Transfer-Encoding: chunked` body: chunk-size lines
//! (with extensions), chunk data, and the trailer section, fed in arbitrary pieces.

/// Why a chunked body could not be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("invalid chunk-size line")]
    SizeLine,
    #[error("chunk data not followed by a line end")]
    DataEnd,
    #[error("chunk-size or trailer line longer than the head limit")]
    LineTooLong,
    #[error("bytes missing from the capture across chunk framing")]
    GapAcrossFraming,
}

/// Progress after feeding bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkProgress {
    /// The body continues.
    NeedMore,
    /// The body (including its trailer section) ended.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size (`digits` read so far).
    Size {
        digits: u8,
    },
    /// Whitespace after the size, before `;` or the line end.
    SizeSpace,
    /// Inside chunk extensions, up to the line end.
    Extension,
    /// Saw CR at the end of the size line.
    SizeLf,
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Saw CR at the start of the final empty line.
    FinalLf,
    Done,
}

/// State of one chunked body.
#[derive(Clone, Debug)]
pub(crate) struct ChunkedBody {
    state: ChunkState,
    size: u64,
    /// Bytes in the current size or trailer line.
    line_len: usize,
    max_line: usize,
}

/// Hex digits in a chunk size (more would overflow u64).
const MAX_SIZE_DIGITS: u8 = 16;

impl ChunkedBody {
    /// A body whose size and trailer lines may be at most `max_line` bytes long.
    pub fn new(max_line: usize) -> Self {
        ChunkedBody {
            state: ChunkState::Size { digits: 0 },
            size: 0,
            line_len: 0,
            max_line,
        }
    }

    /// Follows `bytes`; returns how many were consumed (all of them unless the body ended or an
    /// error occurred at that offset) and the progress.
    pub fn feed(&mut self, bytes: &[u8]) -> (usize, Result<ChunkProgress, ChunkError>) {
        let mut at = 0;
        while let Some(&b) = bytes.get(at) {
            if let ChunkState::Data { remaining } = self.state {
                let available = bytes.len() - at;
                let take = usize::try_from(remaining).map_or(available, |r| r.min(available));
                at += take;
                let left = remaining - take as u64;
                self.state = if left == 0 {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data { remaining: left }
                };
                continue;
            }
            if let Err(error) = self.step(b) {
                return (at, Err(error));
            }
            at += 1;
            if self.state == ChunkState::Done {
                return (at, Ok(ChunkProgress::Done));
            }
        }
        (at, Ok(ChunkProgress::NeedMore))
    }

    /// Accounts for `n` bytes that were transferred but not captured (always the end of a
    /// write). Chunk data and the line end right after it can be skipped blind. If exactly the
    /// five bytes of a bare last chunk (`0` CRLF CRLF) remain after that, the body is taken to
    /// end with the write, as servers that emit a whole chunked body in one write do. Any other
    /// framing inside the gap loses the body.
    pub fn skip(&mut self, mut n: u64) -> Result<ChunkProgress, ChunkError> {
        const LAST_CHUNK_LEN: u64 = b"0\r\n\r\n".len() as u64;
        while n > 0 {
            match self.state {
                ChunkState::Data { remaining } => {
                    let take = remaining.min(n);
                    n -= take;
                    self.state = if take == remaining {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data {
                            remaining: remaining - take,
                        }
                    };
                }
                ChunkState::DataCr => {
                    n -= 1;
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    n -= 1;
                    self.start_size_line();
                }
                ChunkState::Size { digits: 0 } if n == LAST_CHUNK_LEN => {
                    self.state = ChunkState::Done;
                    return Ok(ChunkProgress::Done);
                }
                _ => return Err(ChunkError::GapAcrossFraming),
            }
        }
        Ok(ChunkProgress::NeedMore)
    }

    fn start_size_line(&mut self) {
        self.state = ChunkState::Size { digits: 0 };
        self.size = 0;
        self.line_len = 0;
    }

    fn count_line_byte(&mut self) -> Result<(), ChunkError> {
        self.line_len += 1;
        if self.line_len > self.max_line {
            Err(ChunkError::LineTooLong)
        } else {
            Ok(())
        }
    }

    /// Advances over one framing byte.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use ChunkState as S;
        match self.state {
            S::Size { digits } => {
                self.count_line_byte()?;
                if let Some(value) = hex_value(b) {
                    if digits >= MAX_SIZE_DIGITS {
                        return Err(ChunkError::SizeLine);
                    }
                    self.size = (self.size << 4) | u64::from(value);
                    self.state = S::Size { digits: digits + 1 };
                } else if digits == 0 {
                    return Err(ChunkError::SizeLine);
                } else {
                    self.after_size(b)?;
                }
            }
            S::SizeSpace => {
                self.count_line_byte()?;
                self.after_size(b)?;
            }
            S::Extension => {
                self.count_line_byte()?;
                match b {
                    b'\r' => self.state = S::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => {}
                }
            }
            S::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::SizeLine);
                }
                self.end_size_line();
            }
            S::Data { .. } => {}
            S::DataCr => match b {
                b'\r' => self.state = S::DataLf,
                b'\n' => self.start_size_line(),
                _ => return Err(ChunkError::DataEnd),
            },
            S::DataLf => {
                if b != b'\n' {
                    return Err(ChunkError::DataEnd);
                }
                self.start_size_line();
            }
            S::TrailerStart => match b {
                b'\r' => self.state = S::FinalLf,
                b'\n' => self.state = S::Done,
                _ => {
                    self.line_len = 0;
                    self.count_line_byte()?;
                    self.state = S::Trailer;
                }
            },
            S::Trailer => {
                if b == b'\n' {
                    self.state = S::TrailerStart;
                } else {
                    self.count_line_byte()?;
                }
            }
            S::FinalLf => {
                if b != b'\n' {
                    return Err(ChunkError::SizeLine);
                }
                self.state = S::Done;
            }
            S::Done => {}
        }
        Ok(())
    }

    /// A byte after at least one size digit: whitespace, extension start, or line end.
    fn after_size(&mut self, b: u8) -> Result<(), ChunkError> {
        match b {
            b' ' | b'\t' => self.state = ChunkState::SizeSpace,
            b';' => self.state = ChunkState::Extension,
            b'\r' => self.state = ChunkState::SizeLf,
            b'\n' => self.end_size_line(),
            _ => return Err(ChunkError::SizeLine),
        }
        Ok(())
    }

    fn end_size_line(&mut self) {
        self.state = if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data {
                remaining: self.size,
            }
        };
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"4;name=\"v\"\r\nWiki\r\n5 \r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX-T: 1\r\n\r\n";

    #[test]
    fn follows_body_with_extensions_and_trailers_in_one_piece() {
        let mut body = ChunkedBody::new(1024);
        let mut bytes = BODY.to_vec();
        bytes.extend_from_slice(b"NEXT");
        assert_eq!(body.feed(&bytes), (BODY.len(), Ok(ChunkProgress::Done)));
    }

    #[test]
    fn follows_body_fed_byte_by_byte() {
        let mut body = ChunkedBody::new(1024);
        for (i, b) in BODY.iter().enumerate() {
            let expected = if i + 1 == BODY.len() {
                ChunkProgress::Done
            } else {
                ChunkProgress::NeedMore
            };
            assert_eq!(
                body.feed(std::slice::from_ref(b)),
                (1, Ok(expected)),
                "byte {i}"
            );
        }
    }

    #[test]
    fn skips_gaps_inside_data_only() {
        let mut body = ChunkedBody::new(1024);
        assert_eq!(body.feed(b"10\r\nabc"), (7, Ok(ChunkProgress::NeedMore)));
        assert_eq!(body.skip(13 + 2), Ok(ChunkProgress::NeedMore));
        assert_eq!(body.feed(b"0\r\n\r\n"), (5, Ok(ChunkProgress::Done)));
        let mut body = ChunkedBody::new(1024);
        assert_eq!(body.feed(b"3\r\nabc"), (6, Ok(ChunkProgress::NeedMore)));
        assert_eq!(body.skip(3), Err(ChunkError::GapAcrossFraming));
        let mut body = ChunkedBody::new(1024);
        assert_eq!(body.feed(b"3\r\na"), (4, Ok(ChunkProgress::NeedMore)));
        assert_eq!(body.skip(2 + 2 + 5), Ok(ChunkProgress::Done));
    }

    #[test]
    fn rejects_garbage_and_overlong_lines() {
        assert_eq!(
            ChunkedBody::new(1024).feed(b"zz\r\n").1,
            Err(ChunkError::SizeLine)
        );
        assert_eq!(
            ChunkedBody::new(1024).feed(b"11111111111111111\r\n").1,
            Err(ChunkError::SizeLine)
        );
        assert_eq!(
            ChunkedBody::new(1024).feed(b"1\r\naXY").1,
            Err(ChunkError::DataEnd)
        );
        assert_eq!(
            ChunkedBody::new(8).feed(b"1;aaaaaaaaaaaa\r\n").1,
            Err(ChunkError::LineTooLong)
        );
        let (consumed, result) = ChunkedBody::new(1024).feed(b"2\r\nab\r\nGET");
        assert_eq!((consumed, result), (7, Err(ChunkError::SizeLine)));
    }
}
