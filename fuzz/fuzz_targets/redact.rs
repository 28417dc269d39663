//! Fuzzes the redaction of captured URLs, paths, queries, authorities and command lines
//! (`tracer-user/src/redact.rs`). The input is read as text for the URL functions and split on
//! NUL into arguments for the command line. Checks: no panic (nesting and decoding are bounded),
//! an authority never keeps userinfo, and a marked secret after a sensitive key never survives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::telemetry::redact;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = redact::url(&text);
    let _ = redact::path_and_query(&text);
    let _ = redact::path(&text);
    let _ = redact::urls_in(&text);
    let _ = redact::is_sensitive_name(&text);
    let _ = redact::is_sensitive_query_key(&text);
    if let Some(parts) = redact::url_parts(&text) {
        let _ = redact::authority_without_userinfo(parts.authority);
    }
    assert!(!redact::authority_without_userinfo(&text).contains('@'));
    assert!(!redact::authority_bytes_without_userinfo(data).contains(&b'@'));

    // Whatever precedes it, `token=<marker>` as a whole query parameter is redacted: the output
    // holds no more markers than the input text itself did.
    const MARKER: &str = "fuzzSECRETmarker";
    let marked = format!("{text}&token={MARKER}&b=1");
    let redacted = redact::query(&marked);
    assert!(
        redacted.matches(MARKER).count() <= text.matches(MARKER).count(),
        "a token value survived: {redacted}"
    );

    let args: Vec<&str> = text.split('\0').collect();
    let _ = redact::command_line_args(&args);
});
