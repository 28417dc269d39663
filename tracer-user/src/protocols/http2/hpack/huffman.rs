//! The HPACK Huffman code (RFC 7541 Appendix B), decoding only.
//!
//! The code is canonical (within one length, codes ascend with the symbol; each length starts
//! where the previous one ended, shifted), so the 257 code lengths are the whole table: the
//! decoder reads bit by bit and compares against the first code of each length. Small and
//! allocation-free; the output grows only with decoded symbols, never with a declared length.

/// Code length in bits of every symbol 0..=255, then EOS (256), from RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

const MAX_LEN: usize = 30;
const EOS: u16 = 256;

/// The canonical decoding tables derived from [`CODE_LENGTHS`].
struct Canonical {
    /// First code of each length.
    first: [u32; MAX_LEN + 1],
    /// Codes of each length.
    count: [u32; MAX_LEN + 1],
    /// Index in `symbols` of the first symbol of each length.
    offset: [u16; MAX_LEN + 1],
    /// Symbols ordered by (length, symbol).
    symbols: [u16; 257],
}

const fn canonical() -> Canonical {
    let mut count = [0u32; MAX_LEN + 1];
    let mut s = 0;
    while s < 257 {
        count[CODE_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut first = [0u32; MAX_LEN + 1];
    let mut offset = [0u16; MAX_LEN + 1];
    let mut code = 0u32;
    let mut index = 0u16;
    let mut len = 1;
    while len <= MAX_LEN {
        code = (code + count[len - 1]) << 1;
        first[len] = code;
        offset[len] = index;
        index += count[len] as u16;
        len += 1;
    }
    let mut next = offset;
    let mut symbols = [0u16; 257];
    let mut s = 0;
    while s < 257 {
        let len = CODE_LENGTHS[s] as usize;
        symbols[next[len] as usize] = s as u16;
        next[len] += 1;
        s += 1;
    }
    Canonical {
        first,
        count,
        offset,
        symbols,
    }
}

static TABLES: Canonical = canonical();

/// Why a Huffman string did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    #[error("EOS symbol inside a Huffman string")]
    Eos,
    #[error("Huffman padding longer than 7 bits or not all ones")]
    BadPadding,
}

/// Appends the decoding of `input` to `out`; on error `out` keeps whatever was appended.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let tables = &TABLES;
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let rank = code.wrapping_sub(tables.first[len]);
            if rank < tables.count[len] {
                let symbol = tables.symbols[usize::from(tables.offset[len]) + rank as usize];
                if symbol == EOS {
                    return Err(HuffmanError::Eos);
                }
                out.push(symbol as u8);
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Unreachable for a complete code (every 30-bit string has a code as prefix),
                // kept so a table mistake cannot index out of bounds.
                return Err(HuffmanError::Eos);
            }
        }
    }
    // The rest must be a prefix of EOS (all ones), shorter than a byte.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::BadPadding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(symbol: usize) -> (u32, usize) {
        let tables = &TABLES;
        let len = CODE_LENGTHS[symbol] as usize;
        let start = usize::from(tables.offset[len]);
        let rank = tables.symbols[start..start + tables.count[len] as usize]
            .iter()
            .position(|s| usize::from(*s) == symbol)
            .unwrap();
        (tables.first[len] + rank as u32, len)
    }

    #[test]
    fn canonical_codes_match_the_rfc_table() {
        // Codes and lengths from RFC 7541 Appendix B, across every length class.
        let expected: [(usize, u32, usize); 14] = [
            (0, 0x1ff8, 13),
            (1, 0x7fffd8, 23),
            (9, 0xffffea, 24),
            (10, 0x3ffffffc, 30),
            (32, 0x14, 6),
            (33, 0x3f8, 10),
            (48, 0x0, 5),
            (97, 0x3, 5),
            (92, 0x7fff0, 19),
            (127, 0xffffffc, 28),
            (128, 0xfffe6, 20),
            (254, 0x7fffff0, 27),
            (255, 0x3ffffee, 26),
            (256, 0x3fffffff, 30),
        ];
        for (symbol, code, len) in expected {
            assert_eq!(code_of(symbol), (code, len), "symbol {symbol}");
        }
        // A complete prefix code: the Kraft sum is exactly one.
        let kraft: u64 = CODE_LENGTHS.iter().map(|l| 1u64 << (30 - l)).sum();
        assert_eq!(kraft, 1 << 30);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_the_rfc_examples() {
        let cases = [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
                "https://www.example.com",
            ),
            ("9bd9ab", "gzip"),
            ("", ""),
        ];
        for (encoded, text) in cases {
            let mut out = Vec::new();
            decode(&hex(encoded), &mut out).unwrap();
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn rejects_eos_and_bad_padding() {
        let mut out = Vec::new();
        // EOS (30 ones) padded to 32 bits.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HuffmanError::Eos)
        );
        // '0' (00000) then padding with a zero bit.
        assert_eq!(
            decode(&[0b0000_0101], &mut out),
            Err(HuffmanError::BadPadding)
        );
        // A whole byte of padding.
        assert_eq!(
            decode(&[0x07, 0xff], &mut out),
            Err(HuffmanError::BadPadding)
        );
        out.clear();
        assert_eq!(decode(&[0b0000_0111], &mut out), Ok(()));
        assert_eq!(out, b"0");
    }
}
