//! Socket facts for connections the kernel adopted by sniffing (opened before the agent started):
//! is the fd an INET socket, and what are its local and peer addresses. The fast path borrows the
//! socket with `pidfd_getfd` and asks it (`getsockname`/`getpeername`, O(1)); other families
//! (unix sockets, netlink) are not connections. The fallback scans /proc/<pid>/net/tcp{,6}: at
//! most [`MAX_TABLE_BYTES`] of it, and once per network namespace per [`TABLE_TTL`] (the
//! parsed rows are cached), and at most [`MAX_NAMESPACE_READS_PER_TTL`] namespaces are read per
//! [`TABLE_TTL`] (further lookups go without addresses, counted), so a host with a huge socket
//! table or many namespaces never stalls the event loop.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::idhash::IdHashMap;

/// Most bytes read from one /proc/<pid>/net/tcp{,6} (about 27,000 sockets of 150 bytes).
pub const MAX_TABLE_BYTES: u64 = 4 * 1024 * 1024;
/// How long a namespace's parsed socket table is reused.
pub const TABLE_TTL: Duration = Duration::from_secs(1);
/// Network namespaces whose tables are cached at once (the cache is cleared past it).
const MAX_CACHED_NAMESPACES: usize = 64;
/// Namespaces whose tables may be read per [`TABLE_TTL`]: at most 2 x 4 x `MAX_TABLE_BYTES`
/// parsed per second on the event loop.
pub const MAX_NAMESPACE_READS_PER_TTL: u32 = 4;

/// Socket inode -> (local, peer), from one namespace's tcp and tcp6 tables.
type SocketRows = IdHashMap<u64, (SocketAddr, SocketAddr)>;

/// Counters (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcNetStats {
    /// Socket tables read and parsed.
    pub table_reads: u64,
    /// Lookups answered from a cached table.
    pub table_cache_hits: u64,
    /// Table reads stopped at `MAX_TABLE_BYTES`.
    pub table_reads_truncated: u64,
    /// Sockets skipped because they are not INET (unix, netlink...).
    pub non_inet_sockets: u64,
    /// Lookups left without addresses because the per-second read bound was reached.
    pub table_reads_deferred: u64,
}

/// [`inspect_fd`] with the fallback's tables cached per network namespace.
pub struct ProcNet {
    proc_root: PathBuf,
    tables: IdHashMap<u64, (Instant, SocketRows)>,
    stats: ProcNetStats,
    /// Start of the current read-bound period and the namespaces read in it.
    period: Option<(Instant, u32)>,
}

impl ProcNet {
    pub fn new(proc_root: PathBuf) -> Self {
        ProcNet {
            proc_root,
            tables: IdHashMap::default(),
            stats: ProcNetStats::default(),
            period: None,
        }
    }

    pub fn stats(&self) -> ProcNetStats {
        self.stats
    }

    /// Looks up `fd` of `pid`.
    pub fn inspect_fd(&mut self, pid: u32, fd: i32) -> FdKind {
        let link = match fs::read_link(self.proc_root.join(format!("{pid}/fd/{fd}"))) {
            Ok(l) => l,
            Err(_) => return FdKind::Unknown,
        };
        let Some(inode) = socket_inode(&link.to_string_lossy()) else {
            return FdKind::NotSocket;
        };
        if self.proc_root == Path::new("/proc") {
            match endpoints_via_pidfd(pid, fd) {
                Borrowed::Inet(local, peer) => {
                    return FdKind::Socket {
                        local: Some(local),
                        peer: Some(peer),
                    };
                }
                Borrowed::NotInet => {
                    self.stats.non_inet_sockets += 1;
                    return FdKind::NotSocket;
                }
                Borrowed::Failed => {}
            }
        }
        let (local, peer) = match self.rows_of(pid, inode) {
            Some(rows) => rows.get(&inode).copied().unzip(),
            None => (None, None),
        };
        FdKind::Socket { local, peer }
    }

    /// The socket rows of `pid`'s network namespace, cached for [`TABLE_TTL`] unless they lack
    /// `inode`: a socket opened since the table was read (a connection accepted just now) is
    /// not in it, so the table is read again (within the same read bound).
    fn rows_of(&mut self, pid: u32, inode: u64) -> Option<&SocketRows> {
        let dir = self.proc_root.join(pid.to_string());
        let netns = fs::read_link(dir.join("ns/net"))
            .ok()
            .and_then(|l| namespace_inode(&l.to_string_lossy()))
            .unwrap_or(0);
        let now = Instant::now();
        let fresh = self.tables.get(&netns).is_some_and(|(at, rows)| {
            now.duration_since(*at) < TABLE_TTL && rows.contains_key(&inode)
        });
        if fresh {
            self.stats.table_cache_hits += 1;
        } else {
            let reads = match self.period {
                Some((start, reads)) if now.duration_since(start) < TABLE_TTL => reads,
                _ => {
                    self.period = Some((now, 0));
                    0
                }
            };
            if reads >= MAX_NAMESPACE_READS_PER_TTL {
                self.stats.table_reads_deferred += 1;
                return self.tables.get(&netns).map(|(_, rows)| rows);
            }
            self.period = self.period.map(|(start, n)| (start, n + 1));
            if self.tables.len() >= MAX_CACHED_NAMESPACES {
                self.tables.clear();
            }
            let mut rows = SocketRows::default();
            for table in ["tcp", "tcp6"] {
                let Ok(file) = fs::File::open(dir.join("net").join(table)) else {
                    continue;
                };
                self.stats.table_reads += 1;
                if read_rows(file, MAX_TABLE_BYTES, &mut rows) {
                    self.stats.table_reads_truncated += 1;
                }
            }
            self.tables.insert(netns, (now, rows));
        }
        self.tables.get(&netns).map(|(_, rows)| rows)
    }
}

/// Parses the rows of a /proc/net/tcp{,6} table into `rows`, reading at most `limit` bytes.
/// Returns whether the limit cut the table.
fn read_rows(file: impl Read, limit: u64, rows: &mut SocketRows) -> bool {
    let mut reader = BufReader::new(file.take(limit));
    let mut line = String::new();
    let mut read = 0u64;
    let mut first = true;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n as u64,
        }
        if std::mem::take(&mut first) {
            continue;
        }
        if let Some((inode, local, peer)) = parse_row(&line) {
            rows.insert(inode, (local, peer));
        }
    }
    read >= limit
}

/// `net:[4026531840]` -> 4026531840.
fn namespace_inode(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

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

/// Looks up `fd` of `pid` under `proc_root` (no table cache).
pub fn inspect_fd(proc_root: &Path, pid: u32, fd: i32) -> FdKind {
    ProcNet::new(proc_root.to_path_buf()).inspect_fd(pid, fd)
}

/// What borrowing a socket said.
#[derive(Debug, PartialEq, Eq)]
enum Borrowed {
    Inet(SocketAddr, SocketAddr),
    /// A socket of another family (unix, netlink...).
    NotInet,
    /// The kernel refused (no rights, process gone, not connected): ask /proc.
    Failed,
}

/// Borrows `fd` of `pid` (needs ptrace rights over it: root or CAP_SYS_PTRACE) and asks the
/// socket for both endpoints.
fn endpoints_via_pidfd(pid: u32, fd: i32) -> Borrowed {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain syscalls; every fd returned is owned (and closed) by an OwnedFd.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0);
        if pidfd < 0 {
            return Borrowed::Failed;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let ours = libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        );
        if ours < 0 {
            return Borrowed::Failed;
        }
        let ours = OwnedFd::from_raw_fd(ours as i32);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&ours);
        let mut domain: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let asked = libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        );
        if asked == 0 && domain != libc::AF_INET && domain != libc::AF_INET6 {
            return Borrowed::NotInet;
        }
        let local = sockaddr_of(|addr, len| libc::getsockname(raw, addr, len));
        let peer = sockaddr_of(|addr, len| libc::getpeername(raw, addr, len));
        match (local, peer) {
            (Some(local), Some(peer)) => Borrowed::Inet(local, peer),
            _ => Borrowed::Failed,
        }
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
        let (ino, local, peer) = parse_row(line)?;
        (ino == inode).then_some((local, peer))
    })
}

/// One table row: (inode, local, peer).
fn parse_row(line: &str) -> Option<(u64, SocketAddr, SocketAddr)> {
    let mut cols = line.split_whitespace();
    let _slot = cols.next()?;
    let local = cols.next()?;
    let remote = cols.next()?;
    // st, tx:rx, tr:when, retrnsmt, uid, timeout, inode
    let ino: u64 = cols.nth(6)?.parse().ok()?;
    Some((ino, parse_hex_endpoint(local)?, parse_hex_endpoint(remote)?))
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
            Borrowed::Inet(client.local_addr().unwrap(), client.peer_addr().unwrap())
        );
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(
            endpoints_via_pidfd(std::process::id(), file.as_raw_fd()),
            Borrowed::Failed
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

    #[test]
    fn unix_sockets_are_not_connections() {
        use std::os::fd::AsRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut procnet = ProcNet::new(PathBuf::from("/proc"));
        assert_eq!(
            procnet.inspect_fd(std::process::id(), a.as_raw_fd()),
            FdKind::NotSocket
        );
        assert_eq!(procnet.stats().non_inet_sockets, 1);
        assert_eq!(procnet.stats().table_reads, 0, "no table scanned for it");
    }

    /// The fallback (no pidfd rights: a fake proc root) reads a namespace's table once per TTL,
    /// and never more than its byte bound.
    #[test]
    fn fallback_tables_are_bounded_and_cached_per_namespace() {
        use std::fmt::Write as _;
        let root = std::env::temp_dir().join(format!("tracer-procnet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for pid in [1u32, 2] {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            std::fs::create_dir_all(dir.join("net")).unwrap();
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            std::os::unix::fs::symlink("socket:[31337]", dir.join("fd/3")).unwrap();
            std::os::unix::fs::symlink("/dev/null", dir.join("fd/4")).unwrap();
            std::os::unix::fs::symlink("net:[4026531840]", dir.join("ns/net")).unwrap();
            std::fs::write(dir.join("net/tcp"), TCP).unwrap();
        }
        let mut procnet = ProcNet::new(root.clone());
        let want = FdKind::Socket {
            local: Some("127.0.0.1:8080".parse().unwrap()),
            peer: Some("127.0.0.1:54321".parse().unwrap()),
        };
        assert_eq!(procnet.inspect_fd(1, 3), want);
        assert_eq!(
            procnet.inspect_fd(2, 3),
            want,
            "same namespace: cached table"
        );
        assert_eq!(procnet.inspect_fd(1, 4), FdKind::NotSocket);
        assert_eq!(procnet.inspect_fd(1, 9), FdKind::Unknown);
        let s = procnet.stats();
        assert_eq!((s.table_reads, s.table_cache_hits), (1, 1), "{s:?}");

        // A table far larger than the bound: reading stops at the bound.
        let mut huge = String::from(TCP.lines().next().unwrap());
        huge.push('\n');
        let row = TCP.lines().nth(1).unwrap();
        while (huge.len() as u64) < 2 * MAX_TABLE_BYTES {
            let _ = writeln!(huge, "{row}");
        }
        let mut rows = SocketRows::default();
        assert!(read_rows(huge.as_bytes(), MAX_TABLE_BYTES, &mut rows));
        assert_eq!(rows.len(), 1);

        // Many namespaces at once: at most MAX_NAMESPACE_READS_PER_TTL tables are read per
        // period; the others go without addresses (counted), never stalling the loop.
        let mut procnet = ProcNet::new(root.clone());
        let n = MAX_NAMESPACE_READS_PER_TTL + 2;
        for pid in 10..10 + n {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            std::fs::create_dir_all(dir.join("net")).unwrap();
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            std::os::unix::fs::symlink("socket:[31337]", dir.join("fd/3")).unwrap();
            std::os::unix::fs::symlink(format!("net:[{}]", 5000 + pid), dir.join("ns/net"))
                .unwrap();
            std::fs::write(dir.join("net/tcp"), TCP).unwrap();
        }
        let resolved = (10..10 + n)
            .filter(|pid| procnet.inspect_fd(*pid, 3) == want)
            .count();
        assert_eq!(resolved, MAX_NAMESPACE_READS_PER_TTL as usize);
        assert_eq!(procnet.stats().table_reads_deferred, 2);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A socket accepted after the namespace's table was cached is not in that table: the
    /// lookup reads the table again instead of answering "no addresses" for a second. Before
    /// the fix the cached table answered and the connection's endpoints stayed unknown (its
    /// spans dropped under `--port`).
    #[test]
    fn a_socket_newer_than_the_cached_table_reads_it_again() {
        let root = std::env::temp_dir().join(format!("tracer-procnet-new-{}", std::process::id()));
        let dir = root.join("20");
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        std::fs::create_dir_all(dir.join("net")).unwrap();
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        std::os::unix::fs::symlink("net:[7000]", dir.join("ns/net")).unwrap();
        std::os::unix::fs::symlink("socket:[31337]", dir.join("fd/3")).unwrap();
        std::os::unix::fs::symlink("socket:[31338]", dir.join("fd/4")).unwrap();
        let header = TCP.lines().next().unwrap();
        let old_row = TCP.lines().find(|l| l.contains(" 31337 ")).unwrap();
        std::fs::write(dir.join("net/tcp"), format!("{header}\n{old_row}\n")).unwrap();
        let mut procnet = ProcNet::new(root.clone());
        assert!(matches!(
            procnet.inspect_fd(20, 3),
            FdKind::Socket { local: Some(_), .. }
        ));
        // Socket 31338 is accepted now: the cached table does not list it.
        let new_row = old_row.replacen(" 31337 ", " 31338 ", 1);
        assert_ne!(new_row, old_row, "the fixture row carries inode 31337");
        std::fs::write(
            dir.join("net/tcp"),
            format!("{header}\n{old_row}\n{new_row}\n"),
        )
        .unwrap();
        assert!(matches!(
            procnet.inspect_fd(20, 4),
            FdKind::Socket {
                local: Some(_),
                peer: Some(_)
            }
        ));
        assert_eq!(procnet.stats().table_reads, 2);
        let _ = std::fs::remove_dir_all(&root);
    }
}
