//! The route-or-template of a `tracer top` row: `http.route` when the span has one, otherwise a
//! bounded template of the path, never the raw path with its ids and never the query.
//!
//! The heuristic, segment by segment (after dropping the query, the fragment, and the scheme and
//! authority of an absolute URL):
//! - all digits (`123`), a UUID (`8-4-4-4-12` hex), hex of 8+ characters with a digit
//!   (`5f3a9c0e`), or any segment of [`LONG_SEGMENT`]+ characters (tokens, hashes) -> `{id}`;
//! - other segments are kept (control characters become `?`);
//! - at most [`MAX_SEGMENTS`] segments (further ones become one `{…}`) and at most
//!   [`MAX_TEMPLATE_CHARS`] characters.
//!
//! Rows are bounded anyway (see the aggregator); the template keeps the common `/users/{id}`
//! shape in one row instead of one row per user.

/// Path segments kept in a template.
pub const MAX_SEGMENTS: usize = 8;
/// Characters kept in a template.
pub const MAX_TEMPLATE_CHARS: usize = 96;
/// Segments this long are identifiers whatever their characters.
pub const LONG_SEGMENT: usize = 32;
/// What an identifier segment becomes.
pub const ID: &str = "{id}";

/// Writes the template of `path` (a path, path?query, or absolute URL) into `out` (cleared
/// first; reused by the caller so steady state allocates nothing).
pub fn template_into(path: &str, out: &mut String) {
    out.clear();
    let path = path_of(path);
    if !path.starts_with('/') {
        // `*` (OPTIONS *) or something unparsable: one row for all of them.
        out.push_str(if path == "*" { "*" } else { "{other}" });
        return;
    }
    for (n, segment) in path.split('/').skip(1).enumerate() {
        if n == MAX_SEGMENTS {
            out.push_str("/{…}");
            break;
        }
        out.push('/');
        if is_identifier(segment) {
            out.push_str(ID);
        } else {
            for c in segment.chars() {
                out.push(if c.is_control() { '?' } else { c });
            }
        }
        if out.len() > MAX_TEMPLATE_CHARS {
            let mut cut = MAX_TEMPLATE_CHARS;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
}

/// The path part: no query or fragment, no scheme and authority.
fn path_of(target: &str) -> &str {
    let target = target.split(['?', '#']).next().unwrap_or("");
    match target.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            rest.find('/').map_or("/", |at| &rest[at..])
        }
        _ => target,
    }
}

fn is_identifier(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let bytes = segment.as_bytes();
    bytes.iter().all(u8::is_ascii_digit)
        || is_uuid(bytes)
        || (bytes.len() >= 8
            && bytes.iter().all(u8::is_ascii_hexdigit)
            && bytes.iter().any(u8::is_ascii_digit))
        || segment.chars().count() >= LONG_SEGMENT
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(path: &str) -> String {
        let mut out = String::from("stale");
        template_into(path, &mut out);
        out
    }

    #[test]
    fn ids_become_placeholders_and_words_stay() {
        assert_eq!(template("/users/123"), "/users/{id}");
        assert_eq!(template("/users/123/orders/9"), "/users/{id}/orders/{id}");
        assert_eq!(
            template("/o/3f2b8c1e-9d4a-4b6e-8f00-1234567890ab/items"),
            "/o/{id}/items"
        );
        assert_eq!(template("/blobs/5f3a9c0e77"), "/blobs/{id}");
        assert_eq!(template("/api/v1/status"), "/api/v1/status");
        // Hex-looking words without a digit stay words.
        assert_eq!(template("/feed/deadbeef"), "/feed/deadbeef");
        assert_eq!(template("/t/abcdefghijklmnopqrstuvwxyzABCDEFG"), "/t/{id}");
        assert_eq!(template("/"), "/");
        assert_eq!(template("/ok/"), "/ok/");
    }

    #[test]
    fn queries_fragments_and_authorities_never_appear() {
        assert_eq!(template("/search?q=secret&token=abc"), "/search");
        assert_eq!(template("/a#frag"), "/a");
        assert_eq!(
            template("http://user:pw@api.example:8080/users/7?sig=x"),
            "/users/{id}"
        );
        assert_eq!(template("https://api.example"), "/");
        assert_eq!(template("*"), "*");
        assert_eq!(template("garbage"), "{other}");
    }

    #[test]
    fn templates_are_bounded() {
        let deep = "/a".repeat(50);
        let t = template(&deep);
        assert_eq!(t, format!("{}/{{…}}", "/a".repeat(MAX_SEGMENTS)));
        let wide = format!("/{}", "word-".repeat(100));
        // One long segment is an identifier; many medium ones are cut.
        assert_eq!(template(&wide), "/{id}");
        let medium = "/abcdefghijklmnopqrst".repeat(7);
        let t = template(&medium);
        assert!(t.chars().count() <= MAX_TEMPLATE_CHARS + 1, "{t}");
        assert!(t.ends_with('…'), "{t}");
        assert_eq!(template("/a\u{1b}[31m/b"), "/a?[31m/b");
    }
}
