//! Bounded interning of span attribute strings that repeat from span to span (peer addresses,
//! hosts, user agents, paths, URLs): direct-mapped, per-thread caches of shared strings, so a
//! value seen before costs no allocation. A miss allocates once (as an owned string would) and
//! takes the slot; memory is bounded by `SLOTS` x `MAX_INTERNED_LEN`. Collisions (even chosen
//! by a peer) only cost misses: every operation is O(length).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::hash::Hasher as _;
use std::net::IpAddr;
use std::sync::Arc;

use crate::idhash::IdHasher;
use crate::model::Text;

/// String slots per thread (a power of two).
const SLOTS: usize = 1024;
/// Address slots per thread (a power of two).
const IP_SLOTS: usize = 256;
/// Longer strings are not interned (they are returned owned).
pub const MAX_INTERNED_LEN: usize = 256;
/// Scratch capacity kept between formatted strings.
const MAX_SCRATCH: usize = 4096;

/// One slot of the address cache: the address and its text.
type IpSlot = Option<(IpAddr, Arc<str>)>;

thread_local! {
    static STRINGS: RefCell<Vec<Option<Arc<str>>>> = const { RefCell::new(Vec::new()) };
    static IPS: RefCell<Vec<IpSlot>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

fn slot_of(bytes: &[u8], slots: usize) -> usize {
    let mut hasher = IdHasher::default();
    hasher.write(bytes);
    hasher.write_usize(bytes.len());
    (hasher.finish() as usize) & (slots - 1)
}

/// `s` as a shared string from the cache (allocated and cached on a miss); empty and long
/// strings bypass the cache.
pub fn text(s: &str) -> Text {
    if s.is_empty() {
        return Text::Static("");
    }
    if s.len() > MAX_INTERNED_LEN {
        return Text::Owned(s.to_owned());
    }
    let slot = slot_of(s.as_bytes(), SLOTS);
    STRINGS.with_borrow_mut(|slots| {
        if slots.is_empty() {
            slots.resize(SLOTS, None);
        }
        match &mut slots[slot] {
            Some(cached) if **cached == *s => Text::Shared(Arc::clone(cached)),
            entry => {
                let shared: Arc<str> = Arc::from(s);
                *entry = Some(Arc::clone(&shared));
                Text::Shared(shared)
            }
        }
    })
}

/// A string written by `write` into a reused scratch buffer, then interned as by [`text`]:
/// formatting a value seen before allocates nothing.
pub fn text_fmt(write: impl FnOnce(&mut String)) -> Text {
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        write(scratch);
        let out = text(scratch);
        if scratch.capacity() > MAX_SCRATCH {
            *scratch = String::new();
        }
        out
    })
}

/// The text of an address: IPv4-mapped IPv6 as IPv4, IPv4 dotted quad, IPv6 as `Display` writes
/// it. Cached by address.
pub fn ip(ip: IpAddr) -> Text {
    let ip = ip.to_canonical();
    let slot = match ip {
        IpAddr::V4(v4) => slot_of(&v4.octets(), IP_SLOTS),
        IpAddr::V6(v6) => slot_of(&v6.octets(), IP_SLOTS),
    };
    IPS.with_borrow_mut(|slots| {
        if slots.is_empty() {
            slots.resize(IP_SLOTS, None);
        }
        match &mut slots[slot] {
            Some((cached, text)) if *cached == ip => Text::Shared(Arc::clone(text)),
            entry => {
                let mut s = String::with_capacity(15);
                let _ = write!(s, "{ip}");
                let shared: Arc<str> = Arc::from(s);
                *entry = Some((ip, Arc::clone(&shared)));
                Text::Shared(shared)
            }
        }
    })
}

// Conversions of the model's `Text` that need the agent's dependencies (the model itself is
// also compiled into the fuzz crate, which has none of them).

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_allocation() {
        let a = text("/index.html");
        let b = text(&String::from("/index.html"));
        match (&a, &b) {
            (Text::Shared(a), Text::Shared(b)) => assert!(Arc::ptr_eq(a, b)),
            other => panic!("not shared: {other:?}"),
        }
        assert_eq!(a, "/index.html");
    }

    #[test]
    fn long_and_empty_strings_bypass_the_cache() {
        let long = "x".repeat(MAX_INTERNED_LEN + 1);
        assert!(matches!(text(&long), Text::Owned(s) if s == long));
        assert!(matches!(text(""), Text::Static("")));
    }

    #[test]
    fn collisions_replace_the_slot_and_keep_values_right() {
        // Far more distinct values than slots: every answer is still its own value.
        for i in 0..(4 * SLOTS) {
            let value = format!("/item/{i}");
            assert_eq!(text(&value), value.as_str());
        }
        assert_eq!(text_fmt(|s| s.push_str("a:1")), "a:1");
    }

    #[test]
    fn addresses_are_written_canonically() {
        assert_eq!(ip("127.0.0.1".parse().unwrap()), "127.0.0.1");
        assert_eq!(ip("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
        assert_eq!(ip("2001:db8::1".parse().unwrap()), "2001:db8::1");
        assert_eq!(ip("10.0.0.255".parse().unwrap()), "10.0.0.255");
    }
}
