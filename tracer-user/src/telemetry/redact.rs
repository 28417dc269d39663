//! What never leaves the host: the one place that decides which parts of a URL, a query string
//! or a command line are secret, and replaces them with [`REDACTED`].
//!
//! - Query strings: the value of every parameter whose key, percent-decoded (and `+` read as a
//!   space, as `application/x-www-form-urlencoded` does) and compared without regard to ASCII
//!   case, is in [`SENSITIVE_QUERY_KEYS`]. Other parameters keep their bytes as sent.
//! - URLs: the userinfo (`user:pass@`) becomes `REDACTED:REDACTED@` (the semantic conventions'
//!   form for `url.full`), and the query is redacted as above.
//! - Command lines (only exported on request): values of flags and `KEY=value` arguments whose
//!   name contains a secret-looking word ([`SENSITIVE_NAME_PARTS`]), `Name: value` header
//!   arguments with such a name, and URLs inside any argument.
//!
//! Every function is total on arbitrary text: captured bytes are untrusted.

use std::borrow::Cow;

/// The replacement for every secret value.
pub const REDACTED: &str = "REDACTED";

/// Query parameters whose values are signatures, credentials or tokens (compared
/// case-insensitively after decoding): the semantic conventions' list plus common token names.
pub const SENSITIVE_QUERY_KEYS: [&str; 23] = [
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "access_token",
    "id_token",
    "refresh_token",
    "api_key",
    "apikey",
    "token",
    "password",
    "client_secret",
    // Java servlet containers put the session in the path: `/cart;jsessionid=...`.
    "jsessionid",
    // API keys (`?key=` of Google APIs), OAuth authorization codes, GCS signed-URL
    // credentials, sessions and other common secret names.
    "key",
    "code",
    "X-Goog-Credential",
    "sessionid",
    "secret",
    "passwd",
    "access_key",
];

/// Words that make a command-line flag, `KEY=value` argument or header name secret (matched
/// case-insensitively anywhere in the name, so `--db-password`, `API_KEY` and
/// `X-Auth-Token` all count). Over-redacting a harmless flag is the accepted cost.
pub const SENSITIVE_NAME_PARTS: [&str; 14] = [
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "credential",
    "cookie",
    "session",
    "signature",
    "bearer",
    "private",
    // Header lists (`--otlp-headers=authorization=...`) and connection strings carry credentials.
    "header",
    "dsn",
];

/// Whether a raw (still encoded) query key names a secret.
pub fn is_sensitive_query_key(raw_key: &str) -> bool {
    let Some((decoded, _)) = form_urlencoded::parse(raw_key.as_bytes()).next() else {
        return false;
    };
    let key = decoded.trim();
    SENSITIVE_QUERY_KEYS
        .iter()
        .any(|sensitive| sensitive.eq_ignore_ascii_case(key))
}

/// Characters that end a query parameter: `&`, and `;` and a second `?`, which some servers
/// (Rack 2, Perl's CGI.pm, older Python `parse_qs`) also read as separators. An HTML-escaped
/// `&amp;` splits into `amp` and the next pair.
const QUERY_SEPARATORS: [char; 3] = ['&', ';', '?'];

/// How often a value is percent-decoded to reach a URL or query nested in it; a value still
/// encoded after that is redacted if it could hide anything.
const MAX_VALUE_DECODES: usize = 4;

/// How deep values nested in values are searched; deeper, a value that could hide a pair, a
/// userinfo or an encoding is redacted.
const MAX_NESTING: usize = 4;

/// `query` (without the `?`) with the values of sensitive parameters replaced by [`REDACTED`],
/// and so the whole value of any parameter that hides (plainly or percent-encoded) a URL or
/// query with a secret. Parameters without `=` carry no value and are kept, as are the
/// separators. Borrowed exactly when nothing changed.
pub fn query(query: &str) -> Cow<'_, str> {
    query_nested(query, 0)
}

fn query_nested(query: &str, depth: usize) -> Cow<'_, str> {
    redact_pieces(query, &QUERY_SEPARATORS, |pair, _| {
        redacted_pair(pair, depth)
    })
}

/// A path with the values of sensitive `;name=value` parameters redacted (Java's
/// `;jsessionid=`, matrix parameters), by the same key rule as query parameters.
/// Borrowed exactly when nothing changed.
pub fn path(path: &str) -> Cow<'_, str> {
    path_nested(path, 0)
}

fn path_nested(path: &str, depth: usize) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    redact_pieces(path, &['/', ';'], |piece, after| {
        (after == Some(';'))
            .then(|| redacted_pair(piece, depth))
            .flatten()
    })
}

/// `text` split at `separators` (kept), each piece replaced where `redact(piece, separator
/// before it)` says so. Borrowed exactly when nothing changed.
fn redact_pieces<'a>(
    text: &'a str,
    separators: &[char],
    redact: impl Fn(&str, Option<char>) -> Option<String>,
) -> Cow<'a, str> {
    let mut out: Option<String> = None;
    let mut offset = 0;
    let mut before = None;
    for piece in text.split(separators) {
        let end = offset + piece.len();
        match (redact(piece, before), &mut out) {
            (Some(redacted), Some(out)) => out.push_str(&redacted),
            (Some(redacted), None) => {
                let mut owned = text.get(..offset).unwrap_or_default().to_string();
                owned.push_str(&redacted);
                out = Some(owned);
            }
            (None, Some(out)) => out.push_str(piece),
            (None, None) => {}
        }
        let separator = text.get(end..end + 1).unwrap_or_default();
        if let Some(out) = &mut out {
            out.push_str(separator);
        }
        before = separator.chars().next();
        offset = end + 1;
    }
    out.map_or(Cow::Borrowed(text), Cow::Owned)
}

/// `key=REDACTED` when the pair's key is sensitive or its value hides a secret.
fn redacted_pair(pair: &str, depth: usize) -> Option<String> {
    let (key, value) = pair.split_once('=')?;
    (is_sensitive_query_key(key) || value_hides_secret(value, depth))
        .then(|| format!("{key}={REDACTED}"))
}

/// Whether a query value, percent-decoded until stable, is a URL or query that [`url`] or
/// [`query`] would change.
fn value_hides_secret(value: &str, depth: usize) -> bool {
    if !value.contains(['%', '=', '@', ':']) {
        return false;
    }
    let mut text = Cow::Borrowed(value);
    let mut decodes = 0;
    loop {
        let decoded = match percent_encoding::percent_decode_str(&text).decode_utf8_lossy() {
            Cow::Borrowed(_) => break,
            Cow::Owned(decoded) => decoded,
        };
        if decodes == MAX_VALUE_DECODES {
            return true;
        }
        text = Cow::Owned(decoded);
        decodes += 1;
    }
    if depth >= MAX_NESTING {
        return text.contains(['=', '@', '%']);
    }
    matches!(url_nested(&text, depth + 1), Cow::Owned(_))
        || matches!(query_nested(&text, depth + 1), Cow::Owned(_))
}

/// `path?query#fragment` with the query redacted (the fragment is kept as is).
pub fn path_and_query(path_query: &str) -> Cow<'_, str> {
    path_and_query_nested(path_query, 0)
}

fn path_and_query_nested(path_query: &str, depth: usize) -> Cow<'_, str> {
    let Some((path, rest)) = path_query.split_once('?') else {
        return path_nested(path_query, depth);
    };
    let (query_part, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    match (path_nested(path, depth), query_nested(query_part, depth)) {
        (Cow::Borrowed(_), Cow::Borrowed(_)) => Cow::Borrowed(path_query),
        (p, q) => Cow::Owned(match fragment {
            Some(f) => format!("{p}?{q}#{f}"),
            None => format!("{p}?{q}"),
        }),
    }
}

/// An authority (`[userinfo@]host[:port]`) without its userinfo.
pub fn authority_without_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// A URL split at its authority: `{scheme}://{authority}{rest}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UrlParts<'a> {
    pub scheme: &'a str,
    /// `[userinfo@]host[:port]`: up to the first `/`, `?` or `#`.
    pub authority: &'a str,
    /// Path, query and fragment as written.
    pub rest: &'a str,
}

/// The parts of `scheme://authority/rest`; `None` without `://`. The one place URLs are split.
pub fn url_parts(url: &str) -> Option<UrlParts<'_>> {
    let (scheme, after) = url.split_once("://")?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    Some(UrlParts {
        scheme,
        authority,
        rest,
    })
}

/// A captured authority (a Host header value) without its userinfo: the bytes after the last
/// `@` of the *whole* value. Call it before any length cut, which could drop the `@` and keep
/// the secret before it.
pub fn authority_bytes_without_userinfo(authority: &[u8]) -> &[u8] {
    match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => authority.get(at + 1..).unwrap_or_default(),
        None => authority,
    }
}

/// `scheme://[userinfo@]authority/path?query`: userinfo replaced by `REDACTED:REDACTED`,
/// sensitive query values redacted. Text without `://` is treated as a path and query.
pub fn url(url: &str) -> Cow<'_, str> {
    url_nested(url, 0)
}

fn url_nested(url: &str, depth: usize) -> Cow<'_, str> {
    let Some(UrlParts {
        scheme,
        authority,
        rest,
    }) = url_parts(url)
    else {
        return path_and_query_nested(url, depth);
    };
    let host = authority_without_userinfo(authority);
    let redacted_rest = path_and_query_nested(rest, depth);
    if host.len() == authority.len() && matches!(redacted_rest, Cow::Borrowed(_)) {
        return Cow::Borrowed(url);
    }
    let userinfo = if host.len() == authority.len() {
        ""
    } else {
        "REDACTED:REDACTED@"
    };
    Cow::Owned(format!("{scheme}://{userinfo}{host}{redacted_rest}"))
}

/// Text that must never reach a log (an OTLP endpoint with userinfo, exporter headers):
/// `Debug` shows [`REDACTED`]; the value is read with [`Secret::expose`]. Parses from any
/// string, so it serves as a clap argument type.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Whether a flag, variable or header name contains a secret-looking word.
pub fn is_sensitive_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SENSITIVE_NAME_PARTS.iter().any(|part| lower.contains(part))
}

/// Flags that take a credential without a secret word in their name, by program (the
/// basename of the first argument): `-u user:pw` / `-uuser:pw` / `--user=user:pw`. Only for
/// these programs: `-u` and `-p` mean harmless things elsewhere.
const CREDENTIAL_FLAGS: [(&str, &[&str]); 8] = [
    ("curl", &["-u", "--user", "-U", "--proxy-user"]),
    ("mysql", &["-p"]),
    ("mysqldump", &["-p"]),
    ("mysqladmin", &["-p"]),
    ("mariadb", &["-p"]),
    ("redis-cli", &["-a"]),
    ("sshpass", &["-p"]),
    (
        "wget",
        &["--user", "--http-user", "--proxy-user", "--ftp-user"],
    ),
];

/// Programs whose credential flag is only ever joined (`mysql -pPW`; a bare `-p` prompts).
const JOINED_ONLY: [&str; 4] = ["mysql", "mysqldump", "mysqladmin", "mariadb"];

/// How deep a flag's value is examined as an argument of its own (`--env=--set=K=v`); deeper
/// values are redacted whole.
const MAX_ARGUMENT_NESTING: usize = 4;

/// Command-line arguments with secrets redacted:
/// `--password=x` / `-password=x` / `PASSWORD=x` -> `--password=REDACTED`;
/// `--password x` / `-password x` -> `--password REDACTED` (unless the next argument is itself
/// a `--flag`); `Authorization: Bearer x` (a header argument, as for `curl -H`) and its joined
/// form `-HAuthorization: Bearer x` -> `Authorization: REDACTED`; any other joined flag text
/// with a secret-looking name -> `REDACTED`; the value of any other `--flag=value` is examined
/// as an argument of its own (`--env=DB_PASSWORD=x`); credential flags of known programs
/// ([`CREDENTIAL_FLAGS`]) lose their value; and every URL inside an argument loses its
/// userinfo and sensitive query values.
pub fn command_line_args<S: AsRef<str>>(args: &[S]) -> Vec<String> {
    let program = args
        .first()
        .and_then(|a| a.as_ref().rsplit('/').next())
        .unwrap_or_default();
    let credential_flags = CREDENTIAL_FLAGS
        .iter()
        .find(|(name, _)| *name == program)
        .map_or(&[][..], |(_, flags)| *flags);
    let joined_only = JOINED_ONLY.contains(&program);
    let mut out = Vec::with_capacity(args.len());
    let mut redact_next = false;
    for arg in args {
        let arg = arg.as_ref();
        if redact_next && !arg.starts_with("--") {
            redact_next = false;
            out.push(REDACTED.to_string());
            continue;
        }
        redact_next = false;
        if let Some(redacted) =
            credential_flag(arg, credential_flags, joined_only, &mut redact_next)
        {
            out.push(redacted);
            continue;
        }
        out.push(argument(arg, &mut redact_next, 0));
    }
    out
}

/// `arg` redacted when it is one of `flags` with its value joined; sets `redact_next` when it
/// is the bare flag (and the program takes the value separately).
fn credential_flag(
    arg: &str,
    flags: &[&str],
    joined_only: bool,
    redact_next: &mut bool,
) -> Option<String> {
    for flag in flags {
        let Some(rest) = arg.strip_prefix(flag) else {
            continue;
        };
        if rest.is_empty() {
            *redact_next = !joined_only;
            return Some(arg.to_string());
        }
        if flag.starts_with("--") {
            if rest.starts_with('=') {
                return Some(format!("{flag}={REDACTED}"));
            }
        } else {
            return Some(format!("{flag}{REDACTED}"));
        }
    }
    None
}

/// One argument redacted; sets `redact_next` when it is a bare secret-looking flag.
fn argument(arg: &str, redact_next: &mut bool, depth: usize) -> String {
    if let Some(flag) = arg.strip_prefix('-') {
        let long = flag.starts_with('-');
        let flag = flag.strip_prefix('-').unwrap_or(flag);
        let dashes = arg.get(..arg.len() - flag.len()).unwrap_or_default();
        // `-HAuthorization: Bearer x` (curl's joined -H), before any `=` in the value counts.
        if !long
            && let Some((name, _)) = flag.split_once(':')
            && is_header_name(name)
            && is_sensitive_name(name)
        {
            return format!("{dashes}{name}: {REDACTED}");
        }
        return match flag.split_once('=') {
            Some((name, _)) if is_sensitive_name(name) => format!("{dashes}{name}={REDACTED}"),
            Some((name, _)) if depth >= MAX_ARGUMENT_NESTING => {
                format!("{dashes}{name}={REDACTED}")
            }
            Some((name, value)) => {
                let value = argument(value, &mut false, depth + 1);
                format!("{dashes}{name}={value}")
            }
            None if !is_sensitive_name(flag) => urls_in(arg),
            // `--api-key` / `-token`: the value is the next argument.
            None if is_variable_name(flag) => {
                *redact_next = true;
                arg.to_string()
            }
            // Flag and value joined (`-Hsecret-token abc`): the whole argument goes.
            None => REDACTED.to_string(),
        };
    } else if let Some((name, _)) = arg.split_once('=')
        && is_variable_name(name)
        && is_sensitive_name(name)
    {
        return format!("{name}={REDACTED}");
    } else if let Some((name, _)) = arg.split_once(':')
        && is_header_name(name)
        && is_sensitive_name(name)
    {
        return format!("{name}: {REDACTED}");
    }
    urls_in(arg)
}

/// `NAME` of a `NAME=value` argument: letters, digits, `_`, `-`, `.`.
fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// An HTTP header name (an RFC 9110 token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Every `scheme://...` inside `text` redacted with [`url`]; a URL ends at whitespace or a quote.
pub fn urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_start = rest
            .get(..at)
            .unwrap_or_default()
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = rest
            .get(at + 3..)
            .unwrap_or_default()
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'))
            .map_or(rest.len(), |i| at + 3 + i);
        out.push_str(rest.get(..scheme_start).unwrap_or_default());
        out.push_str(&url(rest.get(scheme_start..end).unwrap_or_default()));
        rest = rest.get(end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_key_is_redacted_case_insensitively() {
        for key in SENSITIVE_QUERY_KEYS {
            for spelling in [
                key.to_string(),
                key.to_ascii_lowercase(),
                key.to_ascii_uppercase(),
            ] {
                let q = format!("a=1&{spelling}=s3cr3t&b=2");
                assert_eq!(
                    query(&q),
                    format!("a=1&{spelling}=REDACTED&b=2"),
                    "key {spelling}"
                );
            }
        }
    }

    #[test]
    fn api_keys_codes_sessions_and_credentials_are_redacted() {
        assert_eq!(
            query(
                "key=AIza1&code=c2&X-Goog-Credential=g3&SessionId=s4&secret=s5&passwd=p6&access_key=a7&q=x"
            ),
            "key=REDACTED&code=REDACTED&X-Goog-Credential=REDACTED&SessionId=REDACTED\
             &secret=REDACTED&passwd=REDACTED&access_key=REDACTED&q=x"
        );
    }

    #[test]
    fn keys_are_compared_after_decoding() {
        assert_eq!(query("%73ig=x"), "%73ig=REDACTED");
        assert_eq!(query("access%5Ftoken=x&k=v"), "access%5Ftoken=REDACTED&k=v");
        assert_eq!(
            query("X%2DAmz%2DSignature=x"),
            "X%2DAmz%2DSignature=REDACTED"
        );
        assert_eq!(query("%53IGNATURE=x"), "%53IGNATURE=REDACTED");
        assert_eq!(
            query("+token+=x"),
            "+token+=REDACTED",
            "+ is a space, trimmed"
        );
        assert_eq!(
            query("tok%65n=a=b"),
            "tok%65n=REDACTED",
            "the whole value goes"
        );
    }

    #[test]
    fn every_separator_and_nested_url_is_searched() {
        // `;` (Rack 2, CGI.pm, old parse_qs), an HTML-escaped `&amp;`, a second `?`.
        assert_eq!(query("a=1;token=s3"), "a=1;token=REDACTED");
        assert_eq!(query("a=1&amp;token=s3&b=2"), "a=1&amp;token=REDACTED&b=2");
        assert_eq!(query("a=1?token=s3"), "a=1?token=REDACTED");
        assert_eq!(
            url("http://h/p?a=1?token=s3"),
            "http://h/p?a=1?token=REDACTED"
        );
        // Signed URLs nested in a value, plain or encoded: the whole value goes.
        assert_eq!(
            query("next=https://b/k?X-Amz-Signature=s3&x=1"),
            "next=https://b/k?X-Amz-Signature=REDACTED&x=1"
        );
        for nested in [
            "next=https%3A%2F%2Fb%2Fk%3FX-Amz-Signature%3Ds3",
            "next=https%3A%2F%2Fu%3As3%40b%2Fk",
            "next=%2Fk%3Fa%3D1%26token%3Ds3",
            "next=https%253A%252F%252Fb%252Fk%253Fsig%253Ds3",
            "state=a%3D1%3Bpassword%3Ds3",
        ] {
            let (key, _) = nested.split_once('=').unwrap_or_default();
            assert_eq!(query(nested), format!("{key}={REDACTED}"), "{nested}");
        }
        // Deep encodings are bounded: past the limit, any value still hiding `=`, `@` or `%`
        // goes; a harmless one is kept.
        let mut deep = String::from("https://b/?sig=s3");
        for _ in 0..10 {
            deep = form_urlencoded::byte_serialize(deep.as_bytes()).collect();
        }
        assert_eq!(query(&format!("n={deep}")), "n=REDACTED");
        for kept in [
            "next=https%3A%2F%2Fb%2Fk%3Fv%3D1",
            "q=a+b%20c",
            "q=%ZZ",
            "next=%2Fhome",
        ] {
            assert!(matches!(query(kept), Cow::Borrowed(_)), "{kept}");
        }
    }

    #[test]
    fn sensitive_path_parameters_are_redacted() {
        assert_eq!(path("/cart;jsessionid=ABC123"), "/cart;jsessionid=REDACTED");
        assert_eq!(
            path("/a;JSESSIONID=ABC;v=1/b;token=t/c"),
            "/a;JSESSIONID=REDACTED;v=1/b;token=REDACTED/c"
        );
        assert_eq!(
            url("http://h/cart;jsessionid=ABC?x=1#f"),
            "http://h/cart;jsessionid=REDACTED?x=1#f"
        );
        assert_eq!(
            path_and_query("/c;jsessionid=ABC"),
            "/c;jsessionid=REDACTED"
        );
        for kept in ["/a;v=1/b", "/token=x", "/a;b", "/"] {
            assert!(matches!(path(kept), Cow::Borrowed(_)), "{kept}");
        }
    }

    #[test]
    fn other_parameters_are_kept_byte_for_byte() {
        for q in [
            "",
            "a=1",
            "token",
            "tokens=1&signatures=2&mytoken=3",
            "q=%ZZ&x=%E2%82",
            "=x&&=",
            "sig",
        ] {
            assert!(matches!(query(q), Cow::Borrowed(_)), "{q}");
        }
        assert_eq!(
            query("sig=1&sig=2&x=sig"),
            "sig=REDACTED&sig=REDACTED&x=sig"
        );
        assert_eq!(query("sig="), "sig=REDACTED");
    }

    #[test]
    fn urls_lose_userinfo_and_signed_values() {
        assert_eq!(
            url("https://u:p@bucket.s3.example/k?X-Amz-Signature=abc&v=1#frag"),
            "https://REDACTED:REDACTED@bucket.s3.example/k?X-Amz-Signature=REDACTED&v=1#frag"
        );
        assert_eq!(url("http://user@h:80"), "http://REDACTED:REDACTED@h:80");
        assert_eq!(url("http://a@b@h/"), "http://REDACTED:REDACTED@h/");
        assert_eq!(url("http://h/p?token=t"), "http://h/p?token=REDACTED");
        assert!(matches!(url("http://h:4318/v1/traces"), Cow::Borrowed(_)));
        assert_eq!(url("/p?password=x"), "/p?password=REDACTED");
        assert_eq!(
            url("http://h/p#?token=x"),
            "http://h/p#?token=REDACTED",
            "over-redacting a fragment is fine"
        );
        assert_eq!(url("://@"), "://REDACTED:REDACTED@");
    }

    #[test]
    fn command_lines_keep_their_shape_and_lose_their_secrets() {
        let args = [
            "/usr/bin/app",
            "--password=hunter2",
            "-db-passwd=x",
            "--api-key",
            "k123",
            "--verbose",
            "--token",
            "--port",
            "8080",
            "DB_PASSWORD=y",
            "MODE=fast",
            "Authorization: Bearer abc",
            "X-Api-Key:zzz",
            "Accept: */*",
            "postgres://admin:pw@db:5432/app?sslmode=require&password=q",
            "--url=http://u:p@h/x?sig=s",
            "--otlp-headers=authorization=Basic%20x",
            "--dsn",
            "app:pw@tcp(db:3306)/app",
            "see http://h/?token=t and ftp://a:b@f/",
        ];
        assert_eq!(
            command_line_args(&args),
            [
                "/usr/bin/app",
                "--password=REDACTED",
                "-db-passwd=REDACTED",
                "--api-key",
                "REDACTED",
                "--verbose",
                "--token",
                "--port",
                "8080",
                "DB_PASSWORD=REDACTED",
                "MODE=fast",
                "Authorization: REDACTED",
                "X-Api-Key: REDACTED",
                "Accept: */*",
                "postgres://REDACTED:REDACTED@db:5432/app?sslmode=require&password=REDACTED",
                "--url=http://REDACTED:REDACTED@h/x?sig=REDACTED",
                "--otlp-headers=REDACTED",
                "--dsn",
                "REDACTED",
                "see http://h/?token=REDACTED and ftp://REDACTED:REDACTED@f/",
            ]
        );
    }

    #[test]
    fn joined_short_flags_with_a_secret_name_lose_the_secret() {
        assert_eq!(
            command_line_args(&[
                "curl",
                "-HAuthorization: Bearer abc",
                "-HX-Api-Key:zzz",
                "-Hsecret-token abc",
                "http://h/x",
                "-token",
                "t",
            ]),
            [
                "curl",
                "-HAuthorization: REDACTED",
                "-HX-Api-Key: REDACTED",
                "REDACTED",
                "http://h/x",
                "-token",
                "REDACTED",
            ]
        );
    }

    #[test]
    fn values_of_harmless_flags_are_examined_too() {
        assert_eq!(
            command_line_args(&[
                "app",
                "--env=DB_PASSWORD=x",
                "--set=db.password=x",
                "--conf=spark.ssl.secret.key=x",
                "-e=API_TOKEN=x",
                "--mode=fast",
                "--next=--password=x",
                "--url=http://u:p@h/?sig=s",
            ]),
            [
                "app",
                "--env=DB_PASSWORD=REDACTED",
                "--set=db.password=REDACTED",
                "--conf=spark.ssl.secret.key=REDACTED",
                "-e=API_TOKEN=REDACTED",
                "--mode=fast",
                "--next=--password=REDACTED",
                "--url=http://REDACTED:REDACTED@h/?sig=REDACTED",
            ]
        );
        let deep = format!("{}x", "--a=".repeat(500));
        let out = command_line_args(&["app", &deep]);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn credential_flags_without_a_secret_word_are_redacted() {
        let cases: [(&[&str], &[&str]); 9] = [
            (
                &["/usr/bin/curl", "-u", "me:pw", "http://h/"],
                &["/usr/bin/curl", "-u", "REDACTED", "http://h/"],
            ),
            (
                &["curl", "--user", "me:pw", "--proxy-user=a:b", "-Ux:y"],
                &[
                    "curl",
                    "--user",
                    "REDACTED",
                    "--proxy-user=REDACTED",
                    "-UREDACTED",
                ],
            ),
            (&["curl", "-ume:pw"], &["curl", "-uREDACTED"]),
            (&["curl", "--user=me:pw"], &["curl", "--user=REDACTED"]),
            (
                &["mysql", "-uroot", "-pPW", "db"],
                &["mysql", "-uroot", "-pREDACTED", "db"],
            ),
            (
                &["redis-cli", "-a", "PW", "-p", "6379"],
                &["redis-cli", "-a", "REDACTED", "-p", "6379"],
            ),
            (&["redis-cli", "-aPW"], &["redis-cli", "-aREDACTED"]),
            // The wrapped command's own `-p` is over-redacted: the accepted cost.
            (
                &["sshpass", "-p", "PW", "ssh", "-p", "22", "h"],
                &["sshpass", "-p", "REDACTED", "ssh", "-p", "REDACTED", "h"],
            ),
            // Other programs' -u / -p are not credentials.
            (&["sort", "-u", "file"], &["sort", "-u", "file"]),
        ];
        for (args, expected) in cases {
            assert_eq!(command_line_args(args), expected, "{args:?}");
        }
    }

    /// Random text from pieces that matter to the parsers: every function is total, a query
    /// keeps its pairs (only sensitive values change), a URL's userinfo never survives, and a
    /// command line keeps one output per argument.
    #[test]
    fn random_text_keeps_the_invariants() {
        use rand::{Rng, SeedableRng};
        const PIECES: [&str; 30] = [
            "=",
            "&",
            "%",
            "%7",
            "%73",
            "+",
            "?",
            "#",
            "@",
            ":",
            "/",
            "://",
            "-",
            "--",
            " ",
            "sig",
            "Token",
            "pass",
            "http",
            "a",
            "Z",
            "9",
            "\u{e9}",
            "\0",
            "REDACTED",
            "x-amz-signature",
            "%5F",
            "_",
            "key",
            "'",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ec2_e75a);
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let text: String = (0..len)
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect();

            let redacted = query(&text);
            let pairs_in: Vec<&str> = text.split(QUERY_SEPARATORS).collect();
            let pairs_out: Vec<&str> = redacted.split(QUERY_SEPARATORS).collect();
            assert_eq!(pairs_in.len(), pairs_out.len(), "{text:?}");
            for (before, after) in pairs_in.iter().zip(&pairs_out) {
                match before.split_once('=') {
                    Some((key, _)) if is_sensitive_query_key(key) => {
                        assert_eq!(*after, format!("{key}={REDACTED}"), "{text:?}");
                    }
                    // A value hiding a nested secret goes as a whole.
                    Some((key, _)) if before != after => {
                        assert_eq!(*after, format!("{key}={REDACTED}"), "{text:?}");
                    }
                    _ => assert_eq!(before, after, "{text:?}"),
                }
            }

            let shown = url(&text);
            if let Some(scheme_end) = text.find("://") {
                let authority = |u: &str| -> String {
                    let rest = u.get(scheme_end + 3..).unwrap_or_default();
                    rest.get(..rest.find(['/', '?', '#']).unwrap_or(rest.len()))
                        .unwrap_or_default()
                        .to_string()
                };
                let before = authority(&text);
                if let Some((_, host)) = before.rsplit_once('@') {
                    assert_eq!(
                        authority(&shown),
                        format!("REDACTED:REDACTED@{host}"),
                        "{text:?}"
                    );
                }
            }

            let _ = urls_in(&text);
            let args: Vec<&str> = text.split('\0').collect();
            assert_eq!(command_line_args(&args).len(), args.len(), "{text:?}");
        }
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let samples = [
            "",
            "-",
            "--",
            "=",
            ":",
            "://",
            "a://",
            "--=",
            "-=x",
            "x://@@",
            "é://ü@ö?sig=ñ",
            "--pass\u{0}word=x",
            "%",
            "%%%=",
            "::::",
            "://?#",
        ];
        for s in samples {
            let _ = query(s);
            let _ = url(s);
            let _ = command_line_args(&[s, s]);
        }
        assert_eq!(
            command_line_args(&["é=1 ü://a:b@h/"]),
            ["é=1 ü://REDACTED:REDACTED@h/"]
        );
    }
}
