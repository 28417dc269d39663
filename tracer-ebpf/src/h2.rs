//! HTTP/2 in the kernel: adoption of connections by their frames, and frame-aware capture.
//!
//! gRPC and Go coalesce many streams' frames into one large write; copying a fixed prefix of
//! each syscall would lose the HEADERS frames past it (and HPACK with them, for the rest of the
//! connection). On a direction whose frame boundaries the kernel knows (`h2::FRAMED`), each
//! syscall is walked frame by frame: every frame header and every non-DATA frame is kept, DATA
//! payloads of `h2::ELIDE_MIN` bytes or more are sent as length-only gaps. Kept runs (across
//! iovecs too) are assembled into one record; a record ends where a gap does (a record is its
//! copied bytes followed by its gap), so the ABI is unchanged. The cursor (bytes left in the
//! current frame, a frame header cut by the end of a syscall) carries over to the next syscall.
//! A walk that cannot finish (too many frames, an unreadable header) reports the rest as a gap
//! and drops the cursor (counted); the direction is framed again when a later syscall starts
//! with a plausible run of frames (the adoption sniff). Every frame header is checked whole
//! (`h2::plausible_frame`): one that is no frame ends HTTP/2 for the direction (counted), at
//! the start of a syscall the bytes are captured as usual, mid-walk the rest is a gap.
//! Everything here is behind the load-time global `H2_WALK` (`maps::h2_walk_enabled`).

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf};
use aya_ebpf::programs::TracePointContext;
use tracer_common::{
    ConnState, DATA_FLAG_LOSS_BEFORE, DATA_HEADER_LEN, H2Cursor, MAX_CAPTURE, counter, h2, syscall,
};

use crate::data::{IoVec, msg_iov, read_iovec};
use crate::maps::{
    CONNS, EVENTS, H2_COPY_OFFSET_LIMIT, H2_SCRATCH, H2_WALKER, H2Scratch, SyscallArgs, Walk,
    count, events_output_flags, h2_walk_enabled,
};

/// Steps of one run of the walker (a step is a frame, a piece of a frame, or a move to the next
/// iovec): what the verifier checks, iteration by iteration.
pub const WALK_STEPS: u32 = 128;
/// Further runs of the walker (tail calls of itself) one syscall may take: a walk covers at
/// most `WALK_STEPS * (WALK_ROUNDS + 1)` steps (the kernel allows 33 tail calls in a row).
pub const WALK_ROUNDS: u64 = 15;
/// Iovecs one walk covers (the kernel's own limit, UIO_MAXIOV; the steps bound the work).
pub const WALK_IOVECS: u64 = 1024;

/// What the sniff found at the start of a transfer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    No,
    /// The client preface (24 bytes, then frames).
    Preface,
    /// A plausible run of frames starting at the first byte.
    Frames,
}

const PREFACE_WORDS: [u64; 3] = {
    let p = h2::PREFACE;
    [
        u64::from_ne_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]),
        u64::from_ne_bytes([p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]]),
        u64::from_ne_bytes([p[16], p[17], p[18], p[19], p[20], p[21], p[22], p[23]]),
    ]
};

/// The adoption sniff (`tracer_common::h2::sniff`) on user memory: the first `seg_len` bytes of
/// a transfer of `total` bytes at `base`. Headers must lie in that first buffer. One whole
/// frame is enough, on an untracked fd too (a server's first write is its SETTINGS frame
/// alone): a false adoption ends at the first header that is no frame (`capture`).
#[inline(always)]
pub fn sniff_user(base: u64, seg_len: u64, total: u64) -> Sniffed {
    if base == 0 || seg_len < h2::FRAME_HEADER_LEN {
        return Sniffed::No;
    }
    // SAFETY: probe-read of user memory; failure handled.
    let Ok(first) = (unsafe { bpf_probe_read_user(base as *const [u8; 9]) }) else {
        return Sniffed::No;
    };
    if first == [b'P', b'R', b'I', b' ', b'*', b' ', b'H', b'T', b'T'] {
        if seg_len >= 24
            // SAFETY: probe-read of user memory; failure handled.
            && let Ok(w) = unsafe { bpf_probe_read_user(base as *const [u64; 3]) }
            // Word by word: an array compare becomes a call to memcmp (a BPF-to-BPF call).
            && w[0] == PREFACE_WORDS[0]
            && w[1] == PREFACE_WORDS[1]
            && w[2] == PREFACE_WORDS[2]
        {
            return Sniffed::Preface;
        }
        return Sniffed::No;
    }
    // Most bytes fail here, on the first header: one read for them.
    if h2::sniff_step(&first, 0).is_none() {
        return Sniffed::No;
    }
    let mut offset = 0u64;
    let mut frames = 0u32;
    for _ in 0..h2::SNIFF_FRAMES {
        if offset >= total || offset + h2::FRAME_HEADER_LEN > seg_len {
            break;
        }
        // SAFETY: probe-read of user memory; failure handled.
        let Ok(h) = (unsafe { bpf_probe_read_user((base + offset) as *const [u8; 9]) }) else {
            return Sniffed::No;
        };
        match h2::sniff_step(&h, offset) {
            Some(end) => {
                offset = end;
                frames += 1;
            }
            None => return Sniffed::No,
        }
    }
    if h2::sniff_verdict(frames, offset, total) {
        Sniffed::Frames
    } else {
        Sniffed::No
    }
}

/// The first buffer of a transfer of `total` bytes and how many of them it holds.
#[inline(always)]
pub fn first_segment<const SYS: u8>(args: &SyscallArgs, total: u64) -> (u64, u64) {
    let seg = match SYS {
        syscall::READV | syscall::WRITEV => read_iovec(args.ptr, 0),
        syscall::RECVMSG | syscall::SENDMSG => {
            msg_iov(args.ptr).and_then(|(iov, n)| if n > 0 { read_iovec(iov, 0) } else { None })
        }
        syscall::SENDFILE | syscall::SPLICE => None,
        _ => Some(IoVec {
            base: args.ptr,
            len: total,
        }),
    };
    match seg {
        Some(v) => (v.base, if v.len < total { v.len } else { total }),
        None => (0, 0),
    }
}

/// Frame-aware capture of one syscall's `total` bytes in direction `dir` when the connection
/// is (or now turns out to be) HTTP/2 on that direction. Returns false when the caller should
/// capture the bytes as usual (not HTTP/2, or the direction's frame boundaries are unknown).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn capture<const SYS: u8>(
    ctx: &TracePointContext,
    tgid: u32,
    tid: u32,
    fd: i32,
    conn: &ConnState,
    dir: u8,
    args: &SyscallArgs,
    total: u64,
) -> bool {
    if !h2_walk_enabled() {
        // No walker (refused by this kernel): HTTP/2 is captured like any stream, and no
        // syscall tries to frame it.
        return false;
    }
    let d = dir & 1;
    let key = tracer_common::conn_key(tgid, fd as u32);
    let mut flags = own_flags(conn, d);
    let holes = conn.h2_holes;
    let mut cursor = if d == 0 { conn.h2[0] } else { conn.h2[1] };
    let mut newly_framed = false;
    if flags & h2::FRAMED != 0 && own_holes_seen(conn, d) != holes {
        // Bytes went by unseen since this direction's last walk: its cursor is lost.
        count(counter::H2_CURSOR_LOST, 1);
        flags &= !h2::FRAMED;
    }
    if flags & h2::FRAMED == 0 {
        let speaks = (conn.h2_flags[0] | conn.h2_flags[1] | flags) & h2::CONN != 0;
        let first = flags & h2::STARTED == 0;
        if !first && !speaks {
            // Not HTTP/2 (its first bytes said so): the usual capture.
            return false;
        }
        let (base, seg_len) = first_segment::<SYS>(args, total);
        let found = sniff_user(base, seg_len, total);
        if found == Sniffed::No {
            let now = flags | h2::STARTED;
            if now != own_flags(conn, d) {
                store_flags(key, d, now, holes);
            }
            return false;
        }
        newly_framed = true;
        flags |= h2::STARTED | h2::FRAMED | h2::CONN;
        cursor = H2Cursor {
            left: if found == Sniffed::Preface {
                h2::PREFACE.len() as u32
            } else {
                0
            },
            head: 0,
            head_len: 0,
            _pad: [0; 3],
        };
    } else if cursor.left == 0 && cursor.head_len == 0 {
        // The syscall starts on a frame header: one that is no frame means these are not
        // HTTP/2 bytes (an HTTP/1 connection adopted on a binary body): captured as usual.
        let (base, seg_len) = first_segment::<SYS>(args, total);
        if header_implausible(base, seg_len) {
            count(counter::H2_IMPLAUSIBLE_FRAME, 1);
            store_flags(key, d, flags & !(h2::FRAMED | h2::CONN), holes);
            return false;
        }
    }
    if !arm_walk::<SYS>(
        tgid,
        tid,
        fd,
        conn,
        dir,
        args,
        total,
        key,
        flags,
        &cursor,
        holes,
        newly_framed,
    ) {
        return false;
    }
    // SAFETY: the walker is a program of this object; on success this call does not return.
    let _ = unsafe { H2_WALKER.tail_call(ctx, 0) };
    // No walker in the array (userspace turns `H2_WALK` off when it cannot load one): the
    // usual capture, and the cursor is lost.
    count(counter::H2_CURSOR_LOST, 1);
    store_flags(key, d, flags & !h2::FRAMED, holes);
    false
}

/// Whether a frame header readable at the start of the buffer (`base`, `seg_len` bytes) is
/// not a plausible frame. A header cut by the buffer's end (or unreadable) is left to the walker.
#[inline(always)]
fn header_implausible(base: u64, seg_len: u64) -> bool {
    if base == 0 || seg_len < h2::FRAME_HEADER_LEN {
        return false;
    }
    // SAFETY: probe-read of user memory; failure handled.
    match unsafe { bpf_probe_read_user(base as *const [u8; 9]) } {
        Ok(h) => h2::plausible_frame(&h).is_none(),
        Err(_) => false,
    }
}

/// Bytes of direction `dir` moved without the kernel seeing them (splice, sendfile, MSG_TRUNC):
/// its frame cursor is lost (counted) until a later syscall resyncs it.
#[inline(always)]
pub fn unknown_bytes(tgid: u32, fd: i32, conn: &ConnState, dir: u8) {
    let d = dir & 1;
    let flags = own_flags(conn, d);
    if flags & h2::FRAMED != 0 {
        count(counter::H2_CURSOR_LOST, 1);
        store_flags(
            tracer_common::conn_key(tgid, fd as u32),
            d,
            flags & !h2::FRAMED,
            conn.h2_holes,
        );
    }
}

/// Direction `d`'s HTTP/2 flags in `conn`.
#[inline(always)]
fn own_flags(conn: &ConnState, d: u8) -> u8 {
    if d == 0 {
        conn.h2_flags[0]
    } else {
        conn.h2_flags[1]
    }
}

/// The hole count direction `d` of `conn` last walked with.
#[inline(always)]
fn own_holes_seen(conn: &ConnState, d: u8) -> u8 {
    if d == 0 {
        conn.h2_holes_seen[0]
    } else {
        conn.h2_holes_seen[1]
    }
}

/// Stores direction `d`'s HTTP/2 flags and the hole count they were judged with. Only the
/// syscalls of direction `d` write its bytes: the other direction may be walked on another
/// CPU at the same time (single-byte stores, no read-modify-write of a shared byte).
#[inline(always)]
fn store_flags(key: u64, d: u8, flags: u8, holes: u8) {
    if let Some(slot) = CONNS.get_ptr_mut(&key) {
        // SAFETY: this connection's entry; only direction d's HTTP/2 bytes change.
        unsafe {
            if d == 0 {
                (*slot).h2_flags[0] = flags;
                (*slot).h2_holes_seen[0] = holes;
            } else {
                (*slot).h2_flags[1] = flags;
                (*slot).h2_holes_seen[1] = holes;
            }
        }
    }
}

/// A frame header's first four bytes (length and type) make the new cursor.
#[inline(always)]
fn frame_cursor(head4: u32) -> u32 {
    let (len, ty) = h2::length_and_type(head4);
    if ty == h2::DATA && len >= h2::ELIDE_MIN {
        len | h2::LEFT_ELIDE
    } else {
        len
    }
}

/// Prepares the walk of the syscall's bytes from `cursor` in this CPU's scratch, for the walker
/// program (`walk_program`, reached by a tail call). False when there is no scratch.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn arm_walk<const SYS: u8>(
    tgid: u32,
    tid: u32,
    fd: i32,
    conn: &ConnState,
    dir: u8,
    args: &SyscallArgs,
    total: u64,
    key: u64,
    flags: u8,
    cursor: &H2Cursor,
    holes: u8,
    newly_framed: bool,
) -> bool {
    let Some(rec) = H2_SCRATCH.get_ptr_mut(0) else {
        count(counter::SCRATCH_UNAVAILABLE, 1);
        return false;
    };
    let (iov, nseg, single) = match SYS {
        syscall::READV | syscall::WRITEV => (args.ptr, args.count, 0),
        syscall::RECVMSG | syscall::SENDMSG => match msg_iov(args.ptr) {
            Some((iov, n)) => (iov, n, 0),
            None => (0, 0, 0),
        },
        _ => (args.ptr, 1, 1),
    };
    // SAFETY: `rec` is this CPU's scratch entry; programs do not preempt each other on a CPU,
    // and the tail call runs on the same CPU right after.
    unsafe {
        (*rec).meta.header =
            crate::conn::header(tracer_common::kind::DATA, tgid, tid, fd, conn.conn_id);
        (*rec).meta.direction = dir;
        (*rec).meta.syscall = SYS;
        (*rec).meta.role = conn.role;
        (*rec).cap = 0;
        (*rec).gap = 0;
        (*rec).enter_ns = args.enter_ns;
        (*rec).key = key;
        (*rec).elided = 0;
        (*rec).split = 0;
        (*rec).records = 0;
        (*rec).ring_full = 0;
        (*rec).sent_cap = 0;
        (*rec).sent_gap = 0;
        (*rec).truncated = 0;
        (*rec).read_failed = 0;
        (*rec).walk = Walk {
            left: (cursor.left & !h2::LEFT_ELIDE) as u64,
            elide: u64::from(cursor.left & h2::LEFT_ELIDE != 0),
            head: cursor.head as u64,
            head_len: cursor.head_len as u64,
            seg_i: 0,
            base: 0,
            seg_len: 0,
            pos: 0,
            run: 0,
            done: 0,
            total,
            iov,
            nseg,
            single,
            ptr: args.ptr,
            finished: 0,
            conn_id: conn.conn_id,
            dir: dir as u64,
            flags: flags as u64,
            armed: 1,
            p_src: 0,
            p_len: 0,
            p_gap: 0,
            p_split: 0,
            rounds: 0,
            holes: holes as u64,
            newly_framed: u64::from(newly_framed),
            implausible: 0,
        };
    }
    true
}

/// The walker program (tail-called from the data programs, so the verifier checks its loop
/// once instead of once per syscall program): walks the armed syscall, sends its records, and
/// stores the advanced cursor in the connection's entry.
///
/// Verifier cost: every iteration of the loop is verified on its own, so the loop body is kept
/// small: the walk's state lives in the per-CPU scratch (not registers), each step makes at
/// most one copy through one call site (`keep`, deferred to the start of the next step), and
/// records are sent from one place (`send`, inside `keep`) with their counters and loss flag
/// kept in the scratch and applied once at the end (about 250k instructions verified on 6.18).
/// Everything is inlined: kernels before 5.10 refuse tail calls in programs with BPF-to-BPF
/// calls.
#[inline(always)]
pub fn walk_program(ctx: &TracePointContext) {
    let Some(rec) = H2_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, armed by the data program that tail-called us (1) or
    // by this program continuing a long walk (2).
    let (key, armed) = unsafe {
        let armed = (*rec).walk.armed;
        if armed == 0 {
            return;
        }
        (*rec).walk.armed = 0;
        ((*rec).key, armed)
    };
    if armed == 1 {
        let slot = CONNS.get_ptr_mut(&key);
        // SAFETY: as above; the slot is this connection's entry (read only here).
        unsafe {
            (*rec).lost = match slot {
                Some(s) => (*s).lost as u64,
                None => 0,
            };
            (*rec).lost_initial = (*rec).lost;
        }
        // SAFETY: as above.
        if unsafe { (*rec).walk.newly_framed } != 0 {
            count(counter::H2_FRAMED, 1);
        }
    }
    let mut stopped = false;
    for _ in 0..WALK_STEPS {
        if step(rec) != 0 {
            stopped = true;
            break;
        }
    }
    // SAFETY: as above.
    unsafe {
        if !stopped && (*rec).walk.rounds < WALK_ROUNDS {
            // Out of steps: the walk goes on in a fresh run of this program (state in scratch).
            (*rec).walk.rounds += 1;
            (*rec).walk.armed = 2;
            let _ = H2_WALKER.tail_call(ctx, 0);
            (*rec).walk.armed = 0;
        }
    }
    // SAFETY: as above.
    let w = unsafe { &mut (*rec).walk };
    let ok = w.finished != 0;
    pending(rec);
    if !ok {
        // Out of steps or iovecs, or an unreadable header: the rest is a gap.
        if w.pos <= w.seg_len && w.run <= w.pos {
            keep(rec, w.base + w.run, w.pos - w.run);
        }
        let consumed = w.done + w.pos;
        if w.total > consumed {
            // SAFETY: as above.
            unsafe { (*rec).gap += w.total - consumed };
        }
        if w.implausible != 0 {
            // Not HTTP/2 after all (counted): the direction is captured as usual from the
            // next syscall.
            count(counter::H2_IMPLAUSIBLE_FRAME, 1);
        } else {
            count(counter::H2_WALK_LIMIT, 1);
            count(counter::H2_CURSOR_LOST, 1);
        }
    }
    send(rec);
    // SAFETY: as above.
    let r = unsafe { &*rec };
    if r.records > 0 {
        count(counter::EVENTS_SUBMITTED, r.records);
    }
    if r.ring_full > 0 {
        count(counter::RINGBUF_FULL, r.ring_full);
    }
    if r.sent_cap > 0 {
        count(counter::BYTES_CAPTURED, r.sent_cap);
    }
    if r.sent_gap > 0 {
        count(counter::BYTES_SKIPPED, r.sent_gap);
    }
    if r.elided > 0 {
        count(counter::H2_DATA_ELIDED_BYTES, r.elided);
    }
    if r.truncated > 0 {
        count(counter::H2_KEPT_TRUNCATED, r.truncated);
    }
    if r.read_failed > 0 {
        count(counter::READ_USER_FAILED, r.read_failed);
    }
    let w = &r.walk;
    let cursor = H2Cursor {
        left: (w.left as u32 & !h2::LEFT_ELIDE) | if w.elide != 0 { h2::LEFT_ELIDE } else { 0 },
        head: w.head as u32,
        head_len: w.head_len as u8,
        _pad: [0; 3],
    };
    // Only this direction's bytes change: the other direction may be walked on another CPU at
    // the same time.
    let mut flags = w.flags as u8;
    if !ok {
        flags &= !h2::FRAMED;
    }
    if w.implausible != 0 {
        flags &= !h2::CONN;
    }
    let d = w.dir & 1;
    if let Some(slot) = CONNS.get_ptr_mut(&key) {
        // SAFETY: this connection's entry (checked by conn_id); only direction d's HTTP/2
        // fields and the loss flag (as the records sent left it) change.
        unsafe {
            if (*slot).conn_id == w.conn_id {
                if d == 0 {
                    (*slot).h2_flags[0] = flags;
                    (*slot).h2_holes_seen[0] = w.holes as u8;
                    (*slot).h2[0] = cursor;
                } else {
                    (*slot).h2_flags[1] = flags;
                    (*slot).h2_holes_seen[1] = w.holes as u8;
                    (*slot).h2[1] = cursor;
                }
                if r.lost != r.lost_initial {
                    // Re-read: another CPU may have changed it during the walk. A hole for
                    // good (LOST_UNTIL_CLOSE) is never lowered; only a 1 is cleared.
                    let now = (*slot).lost;
                    if r.lost == 0 && now == 1 {
                        (*slot).lost = 0;
                    } else if r.lost == 1 && now == 0 {
                        (*slot).lost = 1;
                    }
                }
            }
        }
    }
}

/// Carries out what the previous step deferred: copy its run, add its elided gap, and close
/// the record when the run filled it.
#[inline(always)]
fn pending(rec: *mut H2Scratch) {
    // SAFETY: `rec` is this CPU's scratch entry.
    let w = unsafe { &mut (*rec).walk };
    if w.p_len > 0 {
        keep(rec, w.p_src, w.p_len);
        w.p_len = 0;
    }
    // SAFETY: as above.
    unsafe {
        if w.p_gap > 0 {
            (*rec).gap += w.p_gap;
            (*rec).elided += w.p_gap;
            w.p_gap = 0;
        }
        if w.p_split != 0 {
            (*rec).split = 1;
            w.p_split = 0;
        }
    }
}

/// One step of the walk: a frame header, a piece of a frame, or the move to the next buffer.
/// Returns non-zero when the walk is over (`finished` says whether it reached the end).
#[inline(always)]
fn step(rec: *mut H2Scratch) -> u64 {
    pending(rec);
    // SAFETY: `rec` is this CPU's scratch entry; every value read back from it is range-checked
    // before it sizes a copy (`keep`).
    let w = unsafe { &mut (*rec).walk };
    if w.pos >= w.seg_len {
        if w.run < w.pos {
            w.p_src = w.base + w.run;
            w.p_len = w.pos - w.run;
        }
        w.done += w.seg_len;
        w.seg_len = 0;
        w.pos = 0;
        w.run = 0;
        if w.done >= w.total {
            w.finished = 1;
            return 1;
        }
        if w.seg_i >= w.nseg || w.seg_i >= WALK_IOVECS {
            return 1;
        }
        let v = if w.single != 0 {
            IoVec {
                base: w.ptr,
                len: w.total,
            }
        } else {
            match read_iovec(w.iov, w.seg_i as u32) {
                Some(v) => v,
                None => return 1,
            }
        };
        w.seg_i += 1;
        w.base = v.base;
        let rest = w.total - w.done;
        w.seg_len = if v.len < rest { v.len } else { rest };
        return 0;
    }
    let avail = w.seg_len - w.pos;
    if w.left > 0 {
        let take = if w.left < avail { w.left } else { avail };
        if w.elide != 0 {
            if w.run < w.pos {
                w.p_src = w.base + w.run;
                w.p_len = w.pos - w.run;
            }
            w.p_gap = take;
            w.pos += take;
            w.run = w.pos;
        } else {
            room(rec, take);
            w.pos += take;
        }
        w.left -= take;
        return 0;
    }
    if w.head_len == 0 && avail >= h2::FRAME_HEADER_LEN {
        // SAFETY: probe-read of user memory; failure handled.
        let Ok(h) = (unsafe { bpf_probe_read_user((w.base + w.pos) as *const [u8; 9]) }) else {
            return 1;
        };
        if h2::plausible_frame(&h).is_none() {
            // Not a frame: the rest is a gap and the direction is no longer HTTP/2.
            w.implausible = 1;
            return 1;
        }
        let c = frame_cursor(u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
        let len = (c & !h2::LEFT_ELIDE) as u64;
        let elide = c & h2::LEFT_ELIDE != 0;
        // A whole kept frame in this buffer takes one step; otherwise its header does.
        let whole = !elide && h2::FRAME_HEADER_LEN + len <= avail;
        let add = if whole {
            h2::FRAME_HEADER_LEN + len
        } else {
            h2::FRAME_HEADER_LEN
        };
        room(rec, add);
        w.pos += add;
        w.left = if whole { 0 } else { len };
        w.elide = u64::from(elide);
    } else if w.head_len < 4 {
        // A header cut by the end of a buffer: its length and type byte by byte.
        // SAFETY: probe-read of user memory; failure handled.
        let Ok(b) = (unsafe { bpf_probe_read_user((w.base + w.pos) as *const u8) }) else {
            return 1;
        };
        room(rec, 1);
        w.head = ((w.head << 8) | b as u64) & 0xffff_ffff;
        w.head_len += 1;
        w.pos += 1;
    } else {
        let need = h2::FRAME_HEADER_LEN.saturating_sub(w.head_len);
        let take = if need < avail { need } else { avail };
        room(rec, take);
        w.pos += take;
        w.head_len += take;
        if w.head_len >= h2::FRAME_HEADER_LEN {
            let c = frame_cursor(w.head as u32);
            w.left = (c & !h2::LEFT_ELIDE) as u64;
            w.elide = u64::from(c & h2::LEFT_ELIDE != 0);
            w.head = 0;
            w.head_len = 0;
        }
    }
    0
}

/// Makes room for `add` more kept bytes after the current run: when they would not fit in the
/// record, the run is copied (next step) and the record closed after it.
#[inline(always)]
fn room(rec: *mut H2Scratch, add: u64) {
    // SAFETY: `rec` is this CPU's scratch entry.
    let (cap, w) = unsafe { ((*rec).cap, &mut (*rec).walk) };
    if w.run <= w.pos && cap + (w.pos - w.run) + add > MAX_CAPTURE as u64 {
        if w.run < w.pos {
            w.p_src = w.base + w.run;
            w.p_len = w.pos - w.run;
        }
        w.p_split = 1;
        w.run = w.pos;
    }
}

/// Appends `n` kept bytes at user address `src` to the record. Kept bytes after a gap start a
/// new record (a record is its bytes, then its gap), as do bytes that would not fit; a run
/// larger than a record keeps its first `MAX_CAPTURE` bytes and the rest becomes the gap
/// (counted).
#[inline(always)]
fn keep(rec: *mut H2Scratch, src: u64, n: u64) {
    if n == 0 {
        return;
    }
    // SAFETY: `rec` is this CPU's scratch entry.
    unsafe {
        let cap = (*rec).cap;
        if (*rec).gap > 0
            || (*rec).split != 0
            || cap + n > MAX_CAPTURE as u64
            || cap >= H2_COPY_OFFSET_LIMIT as u64
        {
            send(rec);
        }
        let mut take = n;
        if take > MAX_CAPTURE as u64 {
            (*rec).truncated += 1;
            take = MAX_CAPTURE as u64;
        }
        let off = (*rec).cap as usize & (H2_COPY_OFFSET_LIMIT - 1);
        let len = take as usize & (2 * MAX_CAPTURE - 1);
        let len = if len > MAX_CAPTURE { MAX_CAPTURE } else { len };
        let dst = core::slice::from_raw_parts_mut((*rec).data.as_mut_ptr().add(off), len);
        if bpf_probe_read_user_buf(src as *const u8, dst).is_err() {
            (*rec).read_failed += 1;
            // The bytes stay in the stream as a gap.
            (*rec).gap += n;
            return;
        }
        (*rec).cap = off as u64 + len as u64;
        (*rec).gap += n - take;
    }
}

/// Sends the record assembled so far (nothing when empty) and starts a new one. Its loss flag
/// and counters are kept in the scratch (`walk_program` applies them).
#[inline(always)]
fn send(rec: *mut H2Scratch) {
    // SAFETY: `rec` is this CPU's scratch entry; the size is masked and clamped below.
    unsafe {
        let cap = (*rec).cap;
        let gap = (*rec).gap;
        (*rec).split = 0;
        if cap == 0 && gap == 0 {
            return;
        }
        (*rec).cap = 0;
        (*rec).gap = 0;
        let len = cap + gap;
        let now = bpf_ktime_get_ns();
        let took = now.saturating_sub((*rec).enter_ns);
        let lost = (*rec).lost;
        (*rec).meta.header.ts_ns = now;
        (*rec).meta.flags = if lost != 0 { DATA_FLAG_LOSS_BEFORE } else { 0 };
        (*rec).meta.true_len = if len > u32::MAX as u64 {
            u32::MAX
        } else {
            len as u32
        };
        (*rec).meta.captured_len = cap as u32;
        (*rec).meta.syscall_ns = if took > u32::MAX as u64 {
            u32::MAX
        } else {
            took as u32
        };
        let c = cap as usize & (2 * MAX_CAPTURE - 1);
        let size = DATA_HEADER_LEN + if c > MAX_CAPTURE { MAX_CAPTURE } else { c };
        let record = core::slice::from_raw_parts(rec as *const u8, size);
        if EVENTS
            .output::<[u8]>(record, events_output_flags(false, size as u64))
            .is_ok()
        {
            if lost == 1 {
                (*rec).lost = 0;
            }
            (*rec).records += 1;
            (*rec).sent_cap += cap;
            (*rec).sent_gap += gap;
        } else {
            // The connection's stream now has a hole: its next record says so.
            if lost == 0 {
                (*rec).lost = 1;
            }
            (*rec).ring_full += 1;
        }
    }
}
