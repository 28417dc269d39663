//! What the Go crypto/tls uprobes need from a Go executable, read from its ELF file (untrusted
//! input: every read is bounded and checked, nothing panics): the Go release (`.go.buildinfo`),
//! the file offsets of the entry and of every return instruction of `crypto/tls.(*Conn).Read`
//! and `.Write` (symbol table + disassembly), and the type hash of `*net.TCPConn`.

use iced_x86::{Code, Decoder, DecoderOptions};
use object::{Architecture, Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::layout::{self, Layout};

pub const READ_SYMBOL: &str = "crypto/tls.(*Conn).Read";
pub const WRITE_SYMBOL: &str = "crypto/tls.(*Conn).Write";
/// Where every handshake goes through (Go >= 1.17): marking the connection there keeps its
/// handshake's ciphertext out of the records. Optional: without it, from the first Read/Write.
pub const HANDSHAKE_SYMBOL: &str = "crypto/tls.(*Conn).handshakeContext";
/// `runtime._type` of `*net.TCPConn` (Go 1.20+ names it `type:`, earlier `type.`), or an itab
/// of it as a `net.Conn`: both hold the type's hash at +16.
const TCP_CONN_TYPE_SYMBOLS: [&str; 4] = [
    "type:*net.TCPConn",
    "type.*net.TCPConn",
    "go:itab.*net.TCPConn,net.Conn",
    "go.itab.*net.TCPConn,net.Conn",
];
const BUILDINFO_MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Functions longer than this are not disassembled (Read and Write are a few hundred bytes).
const MAX_FUNCTION_BYTES: u64 = 64 * 1024;
/// More return instructions than this: not the function we know.
const MAX_RETURNS: usize = 64;

/// Why a Go binary gets no uprobes (counted per reason on /metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Not an ELF file the agent can read.
    NotElf,
    /// Not x86-64 (the register ABI and the disassembly are amd64's).
    NotAmd64,
    /// Not a Go executable (no build info): not counted.
    NotGo,
    /// A Go release without the register ABI (before 1.17): the arguments are on the stack.
    StackAbi,
    /// A Go release whose struct layout the agent does not know (or a version it cannot read).
    UnknownLayout,
    /// No symbol table (stripped, `-ldflags=-s`).
    NoSymbols,
    /// Has symbols but no crypto/tls `(*Conn).Read`/`Write` (does not use TLS): not counted.
    NoCryptoTls,
    /// `*net.TCPConn`'s type (or itab) not found: the fd cannot be checked.
    NoTcpConnType,
    /// The functions' code could not be read or decoded (no return instruction found).
    Disassembly,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotElf => "not_elf",
            Skip::NotAmd64 => "not_amd64",
            Skip::NotGo => "not_go",
            Skip::StackAbi => "stack_abi",
            Skip::UnknownLayout => "unknown_layout",
            Skip::NoSymbols => "no_symbols",
            Skip::NoCryptoTls => "no_crypto_tls",
            Skip::NoTcpConnType => "no_tcp_conn_type",
            Skip::Disassembly => "disassembly",
        }
    }
}

/// Where to attach in one function: file offsets of its entry and of its return instructions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sites {
    pub entry: u64,
    pub returns: Vec<u64>,
}

/// Everything the uprobes need of one Go executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTlsBinaryInfo {
    /// As the build info says it (`go1.19.8`).
    pub version: String,
    pub read: Sites,
    pub write: Sites,
    /// File offset of `handshakeContext`'s entry, when the binary has it.
    pub handshake: Option<u64>,
    pub tcp_conn_hash: u32,
    pub layout: Layout,
}

/// Analyses an executable's bytes.
pub fn analyse(data: &[u8]) -> Result<GoTlsBinaryInfo, Skip> {
    analyse_file(data)
}

/// Analyses an executable read through `data`: with an `object::ReadCache` over the open file,
/// only the parts needed (headers, symbol table, build info, the two functions' code) are read,
/// never the whole binary.
pub fn analyse_file<'data, R: object::ReadRef<'data>>(data: R) -> Result<GoTlsBinaryInfo, Skip> {
    let file = object::File::parse(data).map_err(|_| Skip::NotElf)?;
    if !matches!(file, object::File::Elf64(_)) {
        return Err(if matches!(file, object::File::Elf32(_)) {
            Skip::NotAmd64
        } else {
            Skip::NotElf
        });
    }
    if file.architecture() != Architecture::X86_64 || !file.is_little_endian() {
        return Err(Skip::NotAmd64);
    }
    let version = go_version(&file).ok_or(Skip::NotGo)?;
    let (major, minor) = parse_release(&version).ok_or(Skip::UnknownLayout)?;
    if major == 1 && minor < 17 {
        return Err(Skip::StackAbi);
    }
    let layout = layout::for_release(major, minor).ok_or(Skip::UnknownLayout)?;
    let mut read = None;
    let mut write = None;
    let mut handshake = None;
    let mut tcp_type = None;
    let mut symbols = 0usize;
    for sym in file.symbols() {
        symbols += 1;
        let Ok(name) = sym.name() else { continue };
        match name {
            READ_SYMBOL => read = Some((sym.address(), sym.size())),
            WRITE_SYMBOL => write = Some((sym.address(), sym.size())),
            HANDSHAKE_SYMBOL => handshake = Some(sym.address()),
            n if TCP_CONN_TYPE_SYMBOLS.contains(&n) && tcp_type.is_none() => {
                tcp_type = Some(sym.address());
            }
            _ => {}
        }
    }
    if symbols == 0 {
        return Err(Skip::NoSymbols);
    }
    let (Some(read), Some(write)) = (read, write) else {
        return Err(Skip::NoCryptoTls);
    };
    let tcp_conn_hash = tcp_type
        .and_then(|addr| read_vaddr(&file, addr.checked_add(16)?, 4))
        .and_then(|b| Some(u32::from_le_bytes(b.try_into().ok()?)))
        .ok_or(Skip::NoTcpConnType)?;
    Ok(GoTlsBinaryInfo {
        version,
        read: sites(&file, read.0, read.1).ok_or(Skip::Disassembly)?,
        write: sites(&file, write.0, write.1).ok_or(Skip::Disassembly)?,
        handshake: handshake.and_then(|addr| file_offset(&file, addr)),
        tcp_conn_hash,
        layout,
    })
}

/// `go1.19.8` -> (1, 19); `go1.21rc2` -> (1, 21); anything else (devel builds) -> None.
pub fn parse_release(version: &str) -> Option<(u32, u32)> {
    let rest = version.strip_prefix("go")?;
    let mut parts = rest.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor_part = parts.next()?;
    let digits: String = minor_part
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some((major, digits.parse().ok()?))
}

/// The Go version from `.go.buildinfo`: inline (Go >= 1.18, flag bit 2) or through pointers
/// to a string header (1.13 - 1.17).
fn go_version<'data, R: object::ReadRef<'data>>(file: &object::File<'data, R>) -> Option<String> {
    let section = file.section_by_name(".go.buildinfo")?;
    let data = section.data().ok()?;
    let head = data.get(..32)?;
    if &head[..14] != BUILDINFO_MAGIC {
        return None;
    }
    let ptr_size = head[14] as usize;
    let flags = head[15];
    let bytes = if flags & 2 != 0 {
        let (len, used) = uvarint(data.get(32..)?)?;
        let start = 32usize.checked_add(used)?;
        let len = usize::try_from(len).ok().filter(|l| *l <= 256)?;
        data.get(start..start.checked_add(len)?)?.to_vec()
    } else {
        if ptr_size != 8 {
            return None;
        }
        let ptr = u64::from_le_bytes(head.get(16..24)?.try_into().ok()?);
        let header = read_vaddr(file, ptr, 16)?;
        let str_ptr = u64::from_le_bytes(header.get(..8)?.try_into().ok()?);
        let str_len = u64::from_le_bytes(header.get(8..16)?.try_into().ok()?);
        if str_len > 256 {
            return None;
        }
        read_vaddr(file, str_ptr, str_len)?.to_vec()
    };
    String::from_utf8(bytes).ok()
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        x |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((x, i + 1));
        }
    }
    None
}

/// `len` bytes at virtual address `addr`, from the section holding them.
fn read_vaddr<'a, R: object::ReadRef<'a>>(
    file: &object::File<'a, R>,
    addr: u64,
    len: u64,
) -> Option<&'a [u8]> {
    let end = addr.checked_add(len)?;
    for section in file.sections() {
        let start = section.address();
        let size = section.size();
        if addr >= start && end <= start.checked_add(size)? {
            let data = section.data().ok()?;
            let from = usize::try_from(addr - start).ok()?;
            return data.get(from..from.checked_add(usize::try_from(len).ok()?)?);
        }
    }
    None
}

/// File offset of virtual address `addr` (the PT_LOAD segment holding it).
fn file_offset<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    addr: u64,
) -> Option<u64> {
    for segment in file.segments() {
        let start = segment.address();
        let (offset, file_size) = segment.file_range();
        if addr >= start && addr < start.checked_add(file_size)? {
            return offset.checked_add(addr - start);
        }
    }
    None
}

/// Entry and return instructions of the function at `addr` of `size` bytes, as file offsets.
fn sites<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    addr: u64,
    size: u64,
) -> Option<Sites> {
    if size == 0 || size > MAX_FUNCTION_BYTES {
        return None;
    }
    let code = read_vaddr(file, addr, size)?;
    let returns = return_offsets(code, addr)?
        .into_iter()
        .map(|va| file_offset(file, va))
        .collect::<Option<Vec<u64>>>()?;
    Some(Sites {
        entry: file_offset(file, addr)?,
        returns,
    })
}

/// Virtual addresses of the return instructions of x86-64 `code` loaded at `ip`; None when the
/// code does not decode cleanly or has no (or implausibly many) returns.
pub fn return_offsets(code: &[u8], ip: u64) -> Option<Vec<u64>> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        match insn.code() {
            // Go pads functions with INT3; anything undecodable means we are not reading code.
            Code::INVALID => return None,
            Code::Retnq | Code::Retnq_imm16 => {
                out.push(insn.ip());
                if out.len() > MAX_RETURNS {
                    return None;
                }
            }
            _ => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::go_build::build_go_variants;

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("go1.19.8"), Some((1, 19)));
        assert_eq!(parse_release("go1.21rc2"), Some((1, 21)));
        assert_eq!(parse_release("go1.17"), Some((1, 17)));
        assert_eq!(parse_release("devel go1.22-abc"), None);
        assert_eq!(parse_release("go"), None);
    }

    #[test]
    fn returns_are_found_and_garbage_is_refused() {
        // push rbp; mov rbp,rsp; pop rbp; ret; xor eax,eax; ret; int3
        let code = [0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3, 0x31, 0xc0, 0xc3, 0xcc];
        assert_eq!(return_offsets(&code, 0x1000), Some(vec![0x1005, 0x1008]));
        assert_eq!(return_offsets(&[0x90, 0x90], 0), None);
        assert_eq!(return_offsets(&[0x0f, 0xff, 0xff], 0), None);
        assert_eq!(return_offsets(&[], 0), None);
    }

    /// Real Go builds of a TLS program, as the toolchain writes them: default and PIE are
    /// covered (entry, returns, handshake, type hash), stripped and 32-bit are skipped.
    #[test]
    fn real_go_tls_builds_are_analysed() {
        let dir = build_go_variants(
            "gotls-elf",
            "package main\nimport (\"crypto/tls\"; \"net\")\nfunc main() {\n\
             c, err := net.Dial(\"tcp\", \"127.0.0.1:1\")\nif err != nil { return }\n\
             t := tls.Client(c, &tls.Config{})\nt.Write([]byte(\"x\"))\nt.Read(make([]byte, 1))\n}\n",
            &[
                ("default", &[], &[]),
                ("pie", &["-buildmode=pie"], &[]),
                ("stripped", &["-ldflags=-s -w"], &[]),
                ("i386", &[], &[("GOARCH", "386")]),
            ],
        );
        let analysed =
            |name: &str| analyse(&std::fs::read(dir.join(name)).expect("read the build"));
        for name in ["default", "pie"] {
            let info = analysed(name).unwrap_or_else(|e| panic!("{name}: skipped: {e:?}"));
            assert!(info.version.starts_with("go1."), "{name}: {}", info.version);
            for sites in [&info.read, &info.write] {
                assert!(!sites.returns.is_empty(), "{name}: no returns");
                assert!(sites.returns.iter().all(|r| *r > sites.entry), "{name}");
            }
            assert!(info.handshake.is_some(), "{name}: no handshakeContext");
            assert_ne!(info.tcp_conn_hash, 0, "{name}");
            // Read through a cache over the open file (as discovery does): the same result.
            let file = std::fs::File::open(dir.join(name)).expect("open the build");
            assert_eq!(
                analyse_file(&object::ReadCache::new(&file)),
                Ok(info),
                "{name}"
            );
        }
        assert_eq!(analysed("stripped"), Err(Skip::NoSymbols));
        assert_eq!(analysed("i386"), Err(Skip::NotAmd64));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn garbage_and_non_go_files_are_skipped_without_panics() {
        assert_eq!(analyse(b"not an elf"), Err(Skip::NotElf));
        assert_eq!(analyse(&[]), Err(Skip::NotElf));
        let me = std::fs::read("/proc/self/exe").unwrap_or_default();
        assert_eq!(analyse(&me), Err(Skip::NotGo));
        // Truncations of a real file never panic.
        for cut in [64, 100, 1000, 4096, me.len() / 2] {
            let _ = analyse(&me[..cut.min(me.len())]);
        }
    }
}
