//! The few kernel struct offsets the probes need (where a socket's and a thread's network
//! namespace are, and how an fd leads to its socket's endpoints), read from the running kernel's
//! BTF (`/sys/kernel/btf/vmlinux`) at load time.
//!
//! The tracepoint programs have no CO-RE relocations, so the offsets reach them as globals
//! ([`NetnsOffsets`], [`SockOffsets`]). aya parses BTF but keeps its type and member accessors private, so this
//! reads the format's few parts it needs: the type section, walked once to index the types, and
//! struct members by name. Total over any bytes: a malformed or truncated blob is an error, never
//! a panic or an unbounded loop.

use std::borrow::Cow;

use tracer_common::{NetnsOffsets, SockOffsets, netns_known, sock_known};

/// The running kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// Every type starts with name_off, info and size/type (u32 each).
const TYPE_LEN: usize = 12;
const MEMBER_LEN: usize = 12;
/// How deep anonymous members, typedefs and qualifiers are followed (the kernel's nest a few).
const MAX_DEPTH: usize = 16;

mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (bad magic or header)")]
    BadHeader,
    #[error("BTF truncated at byte {0}")]
    Truncated(usize),
    #[error("BTF type kind {0} is unknown")]
    UnknownKind(u32),
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    #[error("no member {member} in struct {of}")]
    NoMember { of: String, member: String },
    #[error("{0} is not where a byte-aligned {1} was expected")]
    WrongType(String, &'static str),
}

/// One BTF blob, its types indexed by id.
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte offset of each type in `types`; index 0 is type id 1 (id 0 is void).
    starts: Vec<usize>,
}

/// A type's fixed part.
#[derive(Clone, Copy, Debug)]
struct TypeHead {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Where its trailing data starts in `types`.
    data: usize,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
}

impl<'a> Btf<'a> {
    /// Indexes a little-endian BTF blob (the kernel's own byte order on the targets we build).
    pub fn parse(blob: &'a [u8]) -> Result<Btf<'a>, BtfError> {
        let magic = blob.get(0..2).ok_or(BtfError::BadHeader)?;
        if u16::from_le_bytes([magic[0], magic[1]]) != MAGIC {
            return Err(BtfError::BadHeader);
        }
        let field = |at| {
            u32_at(blob, at)
                .map(|v| v as usize)
                .ok_or(BtfError::BadHeader)
        };
        let hdr_len = field(4)?;
        if hdr_len < HEADER_LEN {
            return Err(BtfError::BadHeader);
        }
        let (type_off, type_len, str_off, str_len) =
            (field(8)?, field(12)?, field(16)?, field(20)?);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(BtfError::BadHeader)?;
            let end = start.checked_add(len).ok_or(BtfError::BadHeader)?;
            blob.get(start..end).ok_or(BtfError::Truncated(end))
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < types.len() {
            starts.push(at);
            let head = Self::head_in(types, at)?;
            at = head
                .data
                .checked_add(Self::trailing_len(&head)?)
                .ok_or(BtfError::Truncated(at))?;
            if at > types.len() {
                return Err(BtfError::Truncated(at));
            }
        }
        Ok(Btf {
            types,
            strings,
            starts,
        })
    }

    fn head_in(types: &[u8], at: usize) -> Result<TypeHead, BtfError> {
        let word = |i: usize| u32_at(types, at + 4 * i).ok_or(BtfError::Truncated(at));
        let info = word(1)?;
        Ok(TypeHead {
            name_off: word(0)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 != 0,
            size_or_type: word(2)?,
            data: at + TYPE_LEN,
        })
    }

    /// Bytes that follow a type's fixed part.
    fn trailing_len(head: &TypeHead) -> Result<usize, BtfError> {
        Ok(match head.kind {
            kind::INT | kind::VAR | kind::DECL_TAG => 4,
            kind::PTR
            | kind::FWD
            | kind::TYPEDEF
            | kind::VOLATILE
            | kind::CONST
            | kind::RESTRICT
            | kind::FUNC
            | kind::FLOAT
            | kind::TYPE_TAG => 0,
            kind::ARRAY => 12,
            kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => head.vlen * 12,
            kind::ENUM | kind::FUNC_PROTO => head.vlen * 8,
            other => return Err(BtfError::UnknownKind(other)),
        })
    }

    fn head(&self, id: u32) -> Option<TypeHead> {
        let at = *self.starts.get((id as usize).checked_sub(1)?)?;
        Self::head_in(self.types, at).ok()
    }

    fn name(&self, name_off: u32) -> Cow<'a, str> {
        let rest = self.strings.get(name_off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end])
    }

    /// The id of the (first complete) struct called `name`.
    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        (1..=self.starts.len() as u32)
            .find(|&id| {
                self.head(id).is_some_and(|h| {
                    h.kind == kind::STRUCT && h.vlen > 0 && self.name(h.name_off) == name
                })
            })
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// `id` with typedefs and qualifiers (const, volatile, restrict, type tags) looked through.
    fn resolve(&self, mut id: u32) -> Option<TypeHead> {
        for _ in 0..MAX_DEPTH {
            let head = self.head(id)?;
            match head.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = head.size_or_type
                }
                _ => return Some(head),
            }
        }
        None
    }

    /// The byte offset and type id of member `member` of the struct or union `of`, looking into
    /// anonymous struct and union members.
    fn member(&self, of: &TypeHead, member: &str, depth: usize) -> Option<(u32, u32)> {
        if depth > MAX_DEPTH || (of.kind != kind::STRUCT && of.kind != kind::UNION) {
            return None;
        }
        for i in 0..of.vlen {
            let at = of.data + i * MEMBER_LEN;
            let (name_off, type_id, raw) = (
                u32_at(self.types, at)?,
                u32_at(self.types, at + 4)?,
                u32_at(self.types, at + 8)?,
            );
            // With kind_flag the top byte is a bitfield's size; members we read are not bitfields.
            let (bits, bitfield) = if of.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            if bitfield || bits % 8 != 0 {
                continue;
            }
            let byte = bits / 8;
            if name_off == 0 {
                if let Some(inner) = self.resolve(type_id)
                    && let Some((off, id)) = self.member(&inner, member, depth + 1)
                {
                    return Some((byte + off, id));
                }
            } else if self.name(name_off) == member {
                return Some((byte, type_id));
            }
        }
        None
    }

    /// The byte offset of `path` (member names, each in the previous member's struct) in
    /// struct `root`, and the type the path ends at.
    fn offset_of(&self, root: &str, path: &[&str]) -> Result<(u32, TypeHead), BtfError> {
        let mut ty = self
            .resolve(self.struct_id(root)?)
            .ok_or_else(|| BtfError::NoStruct(root.to_owned()))?;
        let mut offset = 0u32;
        let mut of = root.to_owned();
        for member in path {
            let (off, id) = self
                .member(&ty, member, 0)
                .ok_or_else(|| BtfError::NoMember {
                    of: of.clone(),
                    member: (*member).to_owned(),
                })?;
            offset = offset
                .checked_add(off)
                .ok_or(BtfError::WrongType(of.clone(), "offset"))?;
            ty = self
                .resolve(id)
                .ok_or_else(|| BtfError::WrongType(format!("{of}.{member}"), "type"))?;
            of = format!("{of}.{member}");
        }
        Ok((offset, ty))
    }

    /// Offset of a pointer at `path` in `root`.
    fn pointer_at(&self, root: &str, path: &[&str]) -> Result<u32, BtfError> {
        let (offset, ty) = self.offset_of(root, path)?;
        if ty.kind != kind::PTR {
            return Err(BtfError::WrongType(
                format!("{root}.{}", path.join(".")),
                "pointer",
            ));
        }
        Ok(offset)
    }

    /// Offset of a 4-byte integer at `path` in `root`.
    fn u32_at(&self, root: &str, path: &[&str]) -> Result<u32, BtfError> {
        let (offset, ty) = self.offset_of(root, path)?;
        if ty.kind != kind::INT || ty.size_or_type != 4 {
            return Err(BtfError::WrongType(
                format!("{root}.{}", path.join(".")),
                "u32",
            ));
        }
        Ok(offset)
    }

    /// Offset of an integer of `size` bytes at `path` in `root`.
    fn int_at(&self, root: &str, path: &[&str], size: u32) -> Result<u32, BtfError> {
        let (offset, ty) = self.offset_of(root, path)?;
        if ty.kind != kind::INT || ty.size_or_type != size {
            return Err(BtfError::WrongType(
                format!("{root}.{}", path.join(".")),
                if size == 2 { "u16" } else { "integer" },
            ));
        }
        Ok(offset)
    }

    /// Offset of a 16-byte struct or union (an IPv6 address, `struct in6_addr`) at `path` in
    /// `root`.
    fn address16_at(&self, root: &str, path: &[&str]) -> Result<u32, BtfError> {
        let (offset, ty) = self.offset_of(root, path)?;
        if (ty.kind != kind::STRUCT && ty.kind != kind::UNION) || ty.size_or_type != 16 {
            return Err(BtfError::WrongType(
                format!("{root}.{}", path.join(".")),
                "16-byte address",
            ));
        }
        Ok(offset)
    }

    /// Where this kernel keeps what leads from a task's fd to its socket's endpoints; each path
    /// whose fields are missing is left out of `known` (with why, for the log).
    pub fn sock_offsets(&self) -> (SockOffsets, Vec<BtfError>) {
        let mut missing = Vec::new();
        let mut found = |r: Result<u32, BtfError>| r.map_err(|e| missing.push(e)).ok();
        let fd_path = (
            found(self.pointer_at("task_struct", &["files"])),
            found(self.pointer_at("files_struct", &["fdt"])),
            found(self.u32_at("fdtable", &["max_fds"])),
            found(self.pointer_at("fdtable", &["fd"])),
            found(self.pointer_at("file", &["private_data"])),
            found(self.pointer_at("socket", &["file"])),
            found(self.pointer_at("socket", &["sk"])),
        );
        let common = |field| ["__sk_common", field];
        let inet = (
            found(self.int_at("sock", &common("skc_family"), 2)),
            found(self.int_at("sock", &common("skc_num"), 2)),
            found(self.int_at("sock", &common("skc_dport"), 2)),
            found(self.u32_at("sock", &common("skc_rcv_saddr"))),
            found(self.u32_at("sock", &common("skc_daddr"))),
        );
        let inet6 = (
            found(self.address16_at("sock", &common("skc_v6_rcv_saddr"))),
            found(self.address16_at("sock", &common("skc_v6_daddr"))),
        );
        let mut offsets = SockOffsets::default();
        if let (
            Some(files),
            Some(fdt),
            Some(max_fds),
            Some(fd),
            Some(private),
            Some(file),
            Some(sk),
        ) = fd_path
        {
            offsets.task_files = files;
            offsets.files_fdt = fdt;
            offsets.fdt_max_fds = max_fds;
            offsets.fdt_fd = fd;
            offsets.file_private_data = private;
            offsets.socket_file = file;
            offsets.socket_sk = sk;
            offsets.known |= sock_known::FD;
        }
        if let (Some(family), Some(num), Some(dport), Some(rcv_saddr), Some(daddr)) = inet {
            offsets.skc_family = family;
            offsets.skc_num = num;
            offsets.skc_dport = dport;
            offsets.skc_rcv_saddr = rcv_saddr;
            offsets.skc_daddr = daddr;
            offsets.known |= sock_known::INET;
        }
        if let (Some(rcv_saddr), Some(daddr)) = inet6 {
            offsets.skc_v6_rcv_saddr = rcv_saddr;
            offsets.skc_v6_daddr = daddr;
            offsets.known |= sock_known::INET6;
        }
        (offsets, missing)
    }

    /// Where this kernel keeps a socket's and a thread's network namespace inode; each path
    /// whose fields are missing is left out of `known` (with why, for the log).
    pub fn netns_offsets(&self) -> (NetnsOffsets, Vec<BtfError>) {
        let mut offsets = NetnsOffsets::default();
        let mut missing = Vec::new();
        let net_inum = self
            .u32_at("net", &["ns", "inum"])
            .map_err(|e| missing.push(e))
            .ok();
        let sock_net = self
            .pointer_at("sock", &["__sk_common", "skc_net", "net"])
            .map_err(|e| missing.push(e))
            .ok();
        let task_nsproxy = self
            .pointer_at("task_struct", &["nsproxy"])
            .map_err(|e| missing.push(e))
            .ok();
        let nsproxy_net = self
            .pointer_at("nsproxy", &["net_ns"])
            .map_err(|e| missing.push(e))
            .ok();
        if let Some(inum) = net_inum {
            offsets.net_inum = inum;
            if let Some(sock_net) = sock_net {
                offsets.sock_net = sock_net;
                offsets.known |= netns_known::SOCK;
            }
            if let (Some(task), Some(nsproxy)) = (task_nsproxy, nsproxy_net) {
                offsets.task_nsproxy = task;
                offsets.nsproxy_net = nsproxy;
                offsets.known |= netns_known::TASK;
            }
        }
        (offsets, missing)
    }
}

/// What the probes read of the running kernel's structs, from its BTF: the namespace offsets
/// and the fd-to-socket offsets; nothing known (logged) of what its BTF cannot say (network
/// namespaces then come from `/proc`, and so do the endpoints of accepts without an address).
pub fn running_kernel_offsets() -> (NetnsOffsets, SockOffsets) {
    let blob = match std::fs::read(VMLINUX_BTF) {
        Ok(blob) => blob,
        Err(err) => {
            tracing::warn!(
                %err,
                "cannot read the kernel's BTF: network namespaces and the endpoints of accepts \
                 without an address come from /proc"
            );
            return Default::default();
        }
    };
    let btf = match Btf::parse(&blob) {
        Ok(btf) => btf,
        Err(err) => {
            tracing::warn!(
                %err,
                "cannot parse the kernel's BTF: network namespaces and the endpoints of accepts \
                 without an address come from /proc"
            );
            return Default::default();
        }
    };
    let (netns, missing) = btf.netns_offsets();
    for why in &missing {
        tracing::warn!(
            %why,
            "the kernel's BTF lacks a field of the network namespace path: those namespaces \
             come from /proc"
        );
    }
    let (sock, missing) = btf.sock_offsets();
    for why in &missing {
        tracing::warn!(
            %why,
            "the kernel's BTF lacks a field of the path from an fd to its socket: the endpoints \
             of accepts without an address (accept4(fd, NULL, NULL), as Node.js calls it) come \
             from /proc"
        );
    }
    tracing::debug!(?netns, ?sock, "kernel struct offsets from the kernel's BTF");
    (netns, sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob from (name, info, size_or_type, trailing words) types.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
            }
        }
        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn ty(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32, words: &[u32]) {
            let name = self.string(name);
            for w in [name, (kind << 24) | vlen, size_or_type] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }
        /// A struct of `members` (name, type id, byte offset).
        fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) {
            let mut words = Vec::new();
            for (m, id, off) in members {
                words.extend([self.string(m), *id, off * 8]);
            }
            self.ty(name, kind::STRUCT, members.len() as u32, size, &words);
        }
        fn blob(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A kernel-like layout: the namespace pointer sits in an anonymous union member of
    /// `sock_common`, behind a typedef of an anonymous struct (as `possible_net_t`).
    fn kernel_like() -> Vec<u8> {
        let mut b = Builder::new();
        b.ty("unsigned int", kind::INT, 0, 4, &[32]); // 1
        b.strukt("net", 64, &[("passive", 1, 0), ("ns", 3, 40)]); // 2
        b.strukt("ns_common", 24, &[("stashed", 1, 0), ("inum", 1, 16)]); // 3
        b.ty("", kind::PTR, 0, 2, &[]); // 4
        b.strukt("", 8, &[("net", 4, 0)]); // 5
        b.ty("possible_net_t", kind::TYPEDEF, 0, 5, &[]); // 6
        let (a, n) = (b.string("skc_a"), b.string("skc_net"));
        b.ty("", kind::UNION, 2, 8, &[a, 1, 0, n, 6, 0]); // 7
        b.strukt("sock_common", 136, &[("skc_hash", 1, 0), ("", 7, 48)]); // 8
        b.strukt("sock", 800, &[("__sk_common", 8, 0)]); // 9
        b.strukt("nsproxy", 56, &[("count", 1, 0), ("net_ns", 4, 48)]); // 10
        b.ty("", kind::PTR, 0, 10, &[]); // 11
        b.strukt(
            "task_struct",
            4000,
            &[("pid", 1, 100), ("nsproxy", 11, 3000)],
        ); // 12
        b.blob()
    }

    #[test]
    fn offsets_are_found_through_anonymous_members_and_typedefs() {
        let blob = kernel_like();
        let btf = Btf::parse(&blob).unwrap();
        let (offsets, missing) = btf.netns_offsets();
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(
            offsets,
            NetnsOffsets {
                sock_net: 48,
                net_inum: 56,
                task_nsproxy: 3000,
                nsproxy_net: 48,
                known: netns_known::SOCK | netns_known::TASK,
            }
        );
    }

    /// A kernel-like fd-to-socket path: the address and port pairs in anonymous structs inside
    /// anonymous unions of `sock_common` (as the kernel declares `skc_addrpair` and
    /// `skc_portpair`), behind typedefs (`__be32`, `__be16`), and `private_data` of `file` in
    /// an anonymous union.
    fn sock_like(with_v6: bool) -> Vec<u8> {
        let mut b = Builder::new();
        b.ty("unsigned int", kind::INT, 0, 4, &[32]); // 1
        b.ty("unsigned short", kind::INT, 0, 2, &[16]); // 2
        b.ty("__be32", kind::TYPEDEF, 0, 1, &[]); // 3
        b.ty("__be16", kind::TYPEDEF, 0, 2, &[]); // 4
        b.ty("", kind::PTR, 0, 0, &[]); // 5: void *
        b.strukt("", 8, &[("skc_daddr", 3, 0), ("skc_rcv_saddr", 3, 4)]); // 6
        let (pair, anon) = (b.string("skc_addrpair"), 0);
        b.ty("", kind::UNION, 2, 8, &[pair, 1, 0, anon, 6, 0]); // 7
        b.strukt("", 4, &[("skc_dport", 4, 0), ("skc_num", 2, 2)]); // 8
        let pair = b.string("skc_portpair");
        b.ty("", kind::UNION, 2, 4, &[pair, 1, 0, anon, 8, 0]); // 9
        b.strukt("in6_addr", 16, &[("s6_addr32", 1, 0)]); // 10
        let mut common = vec![("", 7, 0), ("", 9, 12), ("skc_family", 2, 16)];
        if with_v6 {
            common.extend([("skc_v6_daddr", 10, 56), ("skc_v6_rcv_saddr", 10, 72)]);
        }
        b.strukt("sock_common", 136, &common); // 11
        b.strukt("sock", 800, &[("__sk_common", 11, 0)]); // 12
        b.strukt("task_struct", 4000, &[("pid", 1, 100), ("files", 5, 2000)]); // 13
        b.strukt("files_struct", 700, &[("count", 1, 0), ("fdt", 5, 32)]); // 14
        b.strukt("fdtable", 48, &[("max_fds", 1, 0), ("fd", 5, 8)]); // 15
        let private = b.string("private_data");
        b.ty("", kind::UNION, 1, 8, &[private, 5, 0]); // 16
        b.strukt("file", 200, &[("f_count", 1, 0), ("", 16, 176)]); // 17
        b.strukt(
            "socket",
            128,
            &[("state", 1, 0), ("file", 5, 16), ("sk", 5, 24)],
        ); // 18
        b.blob()
    }

    #[test]
    fn socket_offsets_are_found_through_anonymous_unions_and_typedefs() {
        let blob = sock_like(true);
        let (offsets, missing) = Btf::parse(&blob).unwrap().sock_offsets();
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(
            offsets,
            SockOffsets {
                task_files: 2000,
                files_fdt: 32,
                fdt_max_fds: 0,
                fdt_fd: 8,
                file_private_data: 176,
                socket_file: 16,
                socket_sk: 24,
                skc_family: 16,
                skc_num: 14,
                skc_dport: 12,
                skc_rcv_saddr: 4,
                skc_daddr: 0,
                skc_v6_rcv_saddr: 72,
                skc_v6_daddr: 56,
                known: sock_known::FD | sock_known::INET | sock_known::INET6,
            }
        );
    }

    /// A kernel without IPv6 addresses in `sock_common` still reads IPv4 endpoints; a field of
    /// the wrong size (a port that is not a u16) is refused, not read as something else.
    #[test]
    fn socket_paths_are_known_separately_and_sizes_are_checked() {
        let blob = sock_like(false);
        let (offsets, missing) = Btf::parse(&blob).unwrap().sock_offsets();
        assert_eq!(offsets.known, sock_known::FD | sock_known::INET);
        assert_eq!(missing.len(), 2, "{missing:?}");

        let mut b = Builder::new();
        b.ty("unsigned int", kind::INT, 0, 4, &[32]); // 1
        b.strukt(
            "sock_common",
            136,
            &[
                ("skc_daddr", 1, 0),
                ("skc_rcv_saddr", 1, 4),
                ("skc_dport", 1, 8),
                ("skc_num", 1, 12),
                ("skc_family", 1, 16),
            ],
        ); // 2
        b.strukt("sock", 800, &[("__sk_common", 2, 0)]); // 3
        let blob = b.blob();
        let (offsets, missing) = Btf::parse(&blob).unwrap().sock_offsets();
        assert_eq!(offsets.known, 0);
        assert!(
            missing
                .iter()
                .any(|e| *e == BtfError::WrongType("sock.__sk_common.skc_num".into(), "u16")),
            "{missing:?}"
        );
    }

    #[test]
    fn a_missing_field_leaves_only_its_path_unknown() {
        let mut b = Builder::new();
        b.ty("unsigned int", kind::INT, 0, 4, &[32]); // 1
        b.strukt("net", 64, &[("ns", 3, 8)]); // 2
        b.strukt("ns_common", 24, &[("inum", 1, 16)]); // 3
        b.ty("", kind::PTR, 0, 2, &[]); // 4
        b.strukt("nsproxy", 56, &[("net_ns", 4, 48)]); // 5
        b.ty("", kind::PTR, 0, 5, &[]); // 6
        b.strukt("task_struct", 4000, &[("nsproxy", 6, 3000)]); // 7
        // A sock whose namespace is not a pointer (a kernel without CONFIG_NET_NS has none).
        b.strukt("sock_common", 136, &[("skc_net", 1, 48)]); // 8
        b.strukt("sock", 800, &[("__sk_common", 8, 0)]); // 9
        let blob = b.blob();
        let (offsets, missing) = Btf::parse(&blob).unwrap().netns_offsets();
        assert_eq!(offsets.known, netns_known::TASK);
        assert_eq!((offsets.net_inum, offsets.task_nsproxy), (24, 3000));
        assert_eq!(missing.len(), 1, "{missing:?}");
    }

    #[test]
    fn any_bytes_are_an_error_or_an_index_never_a_panic() {
        for blob in [kernel_like(), sock_like(true)] {
            for cut in 0..blob.len() {
                if let Ok(btf) = Btf::parse(&blob[..cut]) {
                    let _ = btf.netns_offsets();
                    let _ = btf.sock_offsets();
                }
            }
            let mut flipped = blob.clone();
            for i in 0..flipped.len() {
                flipped[i] ^= 0xff;
                if let Ok(btf) = Btf::parse(&flipped) {
                    let _ = btf.netns_offsets();
                    let _ = btf.sock_offsets();
                }
                flipped[i] ^= 0xff;
            }
        }
        assert_eq!(Btf::parse(b"not btf").err(), Some(BtfError::BadHeader));
    }

    /// The running kernel's BTF names both paths (the host this runs on has BTF: the probes
    /// need it).
    #[test]
    fn the_running_kernel_names_where_namespaces_are() {
        let blob = std::fs::read(VMLINUX_BTF).expect("the kernel's BTF");
        let btf = Btf::parse(&blob).expect("parses");
        let (offsets, missing) = btf.netns_offsets();
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(offsets.known, netns_known::SOCK | netns_known::TASK);
        assert!(offsets.task_nsproxy > 0 && offsets.net_inum > 0);
    }

    /// The running kernel's BTF names the whole path from an fd to its socket's endpoints.
    /// `sock_common` starts with the address pair, then the hash, then the port pair and the
    /// family: that layout is decades old, and checks the lookups land on the right fields.
    #[test]
    fn the_running_kernel_names_the_path_from_an_fd_to_its_endpoints() {
        let blob = std::fs::read(VMLINUX_BTF).expect("the kernel's BTF");
        let btf = Btf::parse(&blob).expect("parses");
        let (offsets, missing) = btf.sock_offsets();
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(
            offsets.known,
            sock_known::FD | sock_known::INET | sock_known::INET6
        );
        assert_eq!(
            (
                offsets.skc_daddr,
                offsets.skc_rcv_saddr,
                offsets.skc_dport,
                offsets.skc_num,
                offsets.skc_family
            ),
            (0, 4, 12, 14, 16)
        );
        assert!(offsets.skc_v6_daddr >= 20 && offsets.skc_v6_rcv_saddr >= 20);
        assert_ne!(offsets.skc_v6_daddr, offsets.skc_v6_rcv_saddr);
        assert!(offsets.task_files > 0 && offsets.file_private_data > 0);
        assert_ne!(offsets.socket_file, offsets.socket_sk);
    }
}
