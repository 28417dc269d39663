//! Struct offsets from a `*crypto/tls.Conn` to its socket's fd, per Go release (amd64). Debian's
//! and most release builds keep no DWARF worth trusting (`-ldflags=-w` is common), so this is a
//! table, checked against the Go sources of each release:
//! - `crypto/tls/conn.go`: `type Conn struct { conn net.Conn; ... }`: the interface (itab,
//!   data) first, offset 0.
//! - `net/net.go` and `net/tcpsock.go`: `type TCPConn struct { conn }`, `type conn struct { fd
//!   *netFD }`: the `*netFD` at offset 0 of the `*net.TCPConn` the interface holds.
//! - `net/fd_posix.go` (`fd_unix.go` before 1.18): `type netFD struct { pfd poll.FD; ... }`;
//!   `internal/poll/fd_unix.go`: `type FD struct { fdmu fdMutex; Sysfd int; ... }` with
//!   `fdMutex { state uint64; rsema uint32; wsema uint32 }` (16 bytes): `Sysfd` at 16.
//!
//! Unchanged from Go 1.17 (the first release with the register ABI on amd64) through 1.25. A
//! newer release is not guessed: its binaries are skipped and counted (`unknown_layout`) until
//! the table is extended.

/// Offsets the kernel follows (`tracer_common::GoTlsBinary`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub tls_conn_conn: u64,
    pub tcp_conn_fd: u64,
    pub netfd_sysfd: u64,
}

/// Go releases whose layout is known: 1.17 ..= this minor.
pub const NEWEST_KNOWN_MINOR: u32 = 25;

/// The layout of Go `major.minor`, when known.
pub fn for_release(major: u32, minor: u32) -> Option<Layout> {
    (major == 1 && (17..=NEWEST_KNOWN_MINOR).contains(&minor)).then_some(Layout {
        tls_conn_conn: 0,
        tcp_conn_fd: 0,
        netfd_sysfd: 16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_register_abi_releases_with_a_known_layout() {
        assert!(for_release(1, 16).is_none());
        assert_eq!(for_release(1, 19).map(|l| l.netfd_sysfd), Some(16));
        assert!(for_release(1, NEWEST_KNOWN_MINOR + 1).is_none());
        assert!(for_release(2, 0).is_none());
    }
}
