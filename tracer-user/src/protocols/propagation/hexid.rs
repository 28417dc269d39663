//! Fixed-length hex ids: decoding with a chosen letter case, and the all-zero check.

/// Which hex letters a format accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HexCase {
    /// `0-9a-f` only (W3C, B3).
    Lower,
    /// `0-9a-fA-F`.
    Any,
}

fn nibble(digit: u8, case: HexCase) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' if case == HexCase::Any => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Decode exactly `2 * N` hex digits into `N` bytes; `None` on any other length or digit.
pub(crate) fn decode<const N: usize>(digits: &[u8], case: HexCase) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let [high, low] = pair else { return None };
        *byte = (nibble(*high, case)? << 4) | nibble(*low, case)?;
    }
    Some(out)
}

/// Decode a non-zero id (all-zero ids are invalid in every supported format).
pub(crate) fn decode_id<const N: usize>(digits: &[u8], case: HexCase) -> Option<[u8; N]> {
    decode::<N>(digits, case).filter(|id| id.iter().any(|b| *b != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_rejects() {
        assert_eq!(decode::<2>(b"0aff", HexCase::Lower), Some([0x0a, 0xff]));
        assert_eq!(decode::<2>(b"0AFF", HexCase::Lower), None);
        assert_eq!(decode::<2>(b"0AFF", HexCase::Any), Some([0x0a, 0xff]));
        assert_eq!(decode::<2>(b"0af", HexCase::Any), None);
        assert_eq!(decode::<2>(b"0afff", HexCase::Any), None);
        assert_eq!(decode::<2>(b"0g00", HexCase::Any), None);
        assert_eq!(decode_id::<2>(b"0000", HexCase::Any), None);
        assert_eq!(decode_id::<2>(b"0001", HexCase::Any), Some([0, 1]));
    }
}
