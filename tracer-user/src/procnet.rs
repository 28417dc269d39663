//! Socket facts from /proc for connections the kernel adopted by sniffing (opened before the agent
//! started): is the fd a socket, and what are its local and peer addresses.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

/// What /proc says about one fd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A socket; addresses when it is a TCP socket listed in /proc/<pid>/net/tcp{,6}.
    Socket { local: Option<SocketAddr>, peer: Option<SocketAddr> },
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
    let Some(inode) = socket_inode(&link.to_string_lossy()) else { return FdKind::NotSocket };
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(proc_root.join(format!("{pid}/net/{table}"))) else {
            continue;
        };
        if let Some((local, peer)) = find_inode(&text, inode) {
            return FdKind::Socket { local: Some(local), peer: Some(peer) };
        }
    }
    FdKind::Socket { local: None, peer: None }
}

/// `socket:[12345]` -> 12345.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
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
            Some(("127.0.0.1:8080".parse().unwrap(), "127.0.0.1:54321".parse().unwrap()))
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
