//! BPF programs, maps and links a process holds (from `/proc/<pid>/fdinfo`) and whether the
//! kernel still has them, by id through the bpf(2) syscall.

use std::collections::BTreeSet;

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
/// Upper bound on ids walked by `loaded_ids`.
const MAX_WALK: usize = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Program,
    Map,
    Link,
}

impl Kind {
    fn next_id_cmd(self) -> libc::c_long {
        match self {
            Kind::Program => BPF_PROG_GET_NEXT_ID,
            Kind::Map => BPF_MAP_GET_NEXT_ID,
            Kind::Link => BPF_LINK_GET_NEXT_ID,
        }
    }

    fn fd_by_id_cmd(self) -> libc::c_long {
        match self {
            Kind::Program => BPF_PROG_GET_FD_BY_ID,
            Kind::Map => BPF_MAP_GET_FD_BY_ID,
            Kind::Link => BPF_LINK_GET_FD_BY_ID,
        }
    }
}

/// The id part of `union bpf_attr` for the *_GET_NEXT_ID and *_GET_FD_BY_ID commands.
#[repr(C)]
#[derive(Default)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The `info` part of `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_prog_info` up to and including `name` (the kernel fills what fits).
#[repr(C, align(8))]
struct ProgInfoPrefix {
    bytes: [u8; 80],
}
const PROG_INFO_NAME: std::ops::Range<usize> = 64..80;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed repr(C) value of the size passed; the
    // kernel reads and writes at most that many bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An fd from the bpf syscall, closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this fd and close it once.
        unsafe { libc::close(self.0) };
    }
}

fn fd_by_id(kind: Kind, id: u32) -> std::io::Result<Fd> {
    let mut attr = IdAttr {
        id,
        ..Default::default()
    };
    let fd = bpf(kind.fd_by_id_cmd(), &mut attr)?;
    libc::c_int::try_from(fd)
        .map(Fd)
        .map_err(|_| std::io::Error::other("fd out of range"))
}

/// Whether the kernel still has object `id` of `kind`; panics on errors other than ENOENT.
pub fn is_loaded(kind: Kind, id: u32) -> bool {
    match fd_by_id(kind, id) {
        Ok(_fd) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
        Err(e) => panic!("bpf GET_FD_BY_ID for {kind:?} {id}: {e}"),
    }
}

/// Every id of `kind` the kernel has now.
pub fn loaded_ids(kind: Kind) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let mut attr = IdAttr::default();
    for _ in 0..MAX_WALK {
        match bpf(kind.next_id_cmd(), &mut attr) {
            Ok(_) => {
                ids.insert(attr.next_id);
                attr.id = attr.next_id;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return ids,
            Err(e) => panic!("bpf GET_NEXT_ID for {kind:?}: {e}"),
        }
    }
    panic!("more than {MAX_WALK} {kind:?} ids");
}

/// The name a program was loaded with, if it is still loaded.
pub fn program_name(id: u32) -> Option<String> {
    let fd = fd_by_id(Kind::Program, id).ok()?;
    let mut info = ProgInfoPrefix { bytes: [0; 80] };
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.0).ok()?,
        info_len: 80,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
    let name = info.bytes.get(PROG_INFO_NAME)?;
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(name.get(..end)?).into_owned())
}

/// BPF object ids behind a process's file descriptors.
#[derive(Clone, Debug, Default)]
pub struct Held {
    pub programs: BTreeSet<u32>,
    pub maps: BTreeSet<u32>,
    pub links: BTreeSet<u32>,
}

impl Held {
    /// Reads `/proc/<pid>/fd` and the fdinfo of each BPF fd.
    pub fn by_pid(pid: u32) -> Held {
        let dir = format!("/proc/{pid}/fd");
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {dir}: {e}"));
        let mut held = Held::default();
        for entry in entries.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            let (set, key) = match target.as_str() {
                "anon_inode:bpf-prog" => (&mut held.programs, "prog_id:"),
                "anon_inode:bpf-map" => (&mut held.maps, "map_id:"),
                "anon_inode:bpf_link" => (&mut held.links, "link_id:"),
                _ => continue,
            };
            let info_path = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
            let Ok(info) = std::fs::read_to_string(&info_path) else {
                continue;
            };
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
            {
                set.insert(id);
            }
        }
        held
    }

    pub fn all(&self) -> Vec<(Kind, &BTreeSet<u32>)> {
        vec![
            (Kind::Program, &self.programs),
            (Kind::Map, &self.maps),
            (Kind::Link, &self.links),
        ]
    }
}
