//! Socket facts for connections the kernel adopted by sniffing (opened before the agent started):
//! is the fd a socket, and what are its local and peer addresses. The fast path borrows the
//! socket with `pidfd_getfd` and asks it (`getsockname`/`getpeername`, O(1)); the fallback scans
//! /proc/<pid>/net/tcp{,6}, which costs O(sockets in the namespace).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

/// What /proc says about one fd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A socket; addresses when it is a TCP socket listed in /proc/<pid>/net/tcp{,6}.
    Socket {
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    },
    /// Not a socket (a file, pipe, tty...): not a connection.
    NotSocket,
    /// The fd or process is gone; nothing can be said.
    Unknown,
}

/// Looks up `fd` of `pid` under `proc_root`.
pub fn inspect_fd(proc_root: &Path, pid: u32, fd: i32) -> FdKind {
    let link = match fs::read_link(proc_root.join(format!("{pid}/fd/{fd}"))) {
        Ok(l) => l,
        Err(_) => return FdKind::Unknown,
    };
    let Some(inode) = socket_inode(&link.to_string_lossy()) else {
        return FdKind::NotSocket;
    };
    if proc_root == Path::new("/proc")
        && let Some((local, peer)) = endpoints_via_pidfd(pid, fd)
    {
        return FdKind::Socket {
            local: Some(local),
            peer: Some(peer),
        };
    }
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(proc_root.join(format!("{pid}/net/{table}"))) else {
            continue;
        };
        if let Some((local, peer)) = find_inode(&text, inode) {
            return FdKind::Socket {
                local: Some(local),
                peer: Some(peer),
            };
        }
    }
    FdKind::Socket {
        local: None,
        peer: None,
    }
}

/// Borrows `fd` of `pid` (needs ptrace rights over it: root or CAP_SYS_PTRACE) and asks the
/// socket for both endpoints. `None` when the kernel refuses or the socket is not IP.
fn endpoints_via_pidfd(pid: u32, fd: i32) -> Option<(SocketAddr, SocketAddr)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain syscalls; every fd returned is owned (and closed) by an OwnedFd.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0);
        if pidfd < 0 {
            return None;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let ours = libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        );
        if ours < 0 {
            return None;
        }
        let ours = OwnedFd::from_raw_fd(ours as i32);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&ours);
        let local = sockaddr_of(|addr, len| libc::getsockname(raw, addr, len))?;
        let peer = sockaddr_of(|addr, len| libc::getpeername(raw, addr, len))?;
        Some((local, peer))
    }
}

/// Calls `get` with a sockaddr buffer and converts an AF_INET/AF_INET6 answer.
fn sockaddr_of(
    get: impl FnOnce(*mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int,
) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; the kernel writes at most `len` bytes into it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    if get(
        (&mut storage as *mut libc::sockaddr_storage).cast(),
        &mut len,
    ) != 0
    {
        return None;
    }
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4 = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(v4.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6 = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            let ip = match ip.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(ip),
            };
            Some(SocketAddr::new(ip, u16::from_be(v6.sin6_port)))
        }
        _ => None,
    }
}

/// `socket:[12345]` -> 12345.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Finds the row with `inode` in a /proc/net/tcp or tcp6 table.
pub fn find_inode(table: &str, inode: u64) -> Option<(SocketAddr, SocketAddr)> {
    table.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let _slot = cols.next()?;
        let local = cols.next()?;
        let remote = cols.next()?;
        // st, tx:rx, tr:when, retrnsmt, uid, timeout, inode
        let ino: u64 = cols.nth(6)?.parse().ok()?;
        if ino != inode {
            return None;
        }
        Some((parse_hex_endpoint(local)?, parse_hex_endpoint(remote)?))
    })
}

/// `0100007F:1F90` (IPv4, each 32-bit word in host order) -> 127.0.0.1:8080.
pub fn parse_hex_endpoint(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => {
            let word = u32::from_str_radix(addr, 16).ok()?;
            IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 20 4 30 10 -1\n";

    #[test]
    fn parses_ipv4_rows() {
        assert_eq!(
            find_inode(TCP, 31337),
            Some((
                "127.0.0.1:8080".parse().unwrap(),
                "127.0.0.1:54321".parse().unwrap()
            ))
        );
        assert_eq!(find_inode(TCP, 1), None);
        assert_eq!(find_inode("garbage\n1 2 3", 1), None);
    }

    #[test]
    fn parses_ipv6_and_mapped() {
        // ::1 port 80
        assert_eq!(
            parse_hex_endpoint("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        // ::ffff:127.0.0.1 port 8080 is reported as IPv4
        assert_eq!(
            parse_hex_endpoint("0000000000000000FFFF00000100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(parse_hex_endpoint("zz:1"), None);
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("pipe:[5]"), None);
    }

    #[test]
    fn pidfd_path_reads_both_endpoints_of_a_live_socket() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let got = endpoints_via_pidfd(std::process::id(), client.as_raw_fd());
        assert_eq!(
            got,
            Some((client.local_addr().unwrap(), client.peer_addr().unwrap()))
        );
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(
            endpoints_via_pidfd(std::process::id(), file.as_raw_fd()),
            None
        );
    }

    #[test]
    fn inspects_a_real_socket_of_this_process() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let kind = inspect_fd(Path::new("/proc"), std::process::id(), client.as_raw_fd());
        match kind {
            FdKind::Socket { local, peer } => {
                assert_eq!(peer, Some(addr));
                assert_eq!(local, Some(client.local_addr().unwrap()));
            }
            other => panic!("expected a socket, got {other:?}"),
        }
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(
            inspect_fd(Path::new("/proc"), std::process::id(), file.as_raw_fd()),
            FdKind::NotSocket
        );
    }
}
