//! OTLP exporter configuration: the standard `OTEL_EXPORTER_OTLP_*` / `OTEL_BSP_*` environment
//! variables, command-line overrides on top, and the spec defaults underneath.
//!
//! Precedence for every setting: CLI override > signal-specific variable (`..._TRACES_...`) >
//! generic variable > default. Empty variables count as unset (OTel convention). Invalid values
//! are reported as [`ConfigError`] naming the variable or flag, rather than silently ignored.
//!
//! Header values and the endpoint's userinfo are credentials: they never appear in an error, a
//! log line or a `Debug` rendering (errors show the header name only, endpoints pass through
//! [`crate::telemetry::redact::url`]).

use std::time::Duration;

use thiserror::Error;

/// Reads one environment variable; injected so parsing is testable without touching the process
/// environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const ENV_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const ENV_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const ENV_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const ENV_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
pub const ENV_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
pub const ENV_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
pub const ENV_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
pub const ENV_TRACES_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION";
pub const ENV_BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
pub const ENV_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
pub const ENV_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";

/// TLS settings of the OTLP exporter spec this build does not read: a warning at start names the
/// ones set (TLS works with an `https://` endpoint over http/protobuf or http/json, verified
/// against the system's roots; gRPC needs an `http://` endpoint).
pub const IGNORED_TLS_SETTINGS: [&str; 8] = [
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
];

/// Which of [`IGNORED_TLS_SETTINGS`] are set (to anything not blank).
pub fn ignored_tls_settings(env: EnvLookup<'_>) -> Vec<&'static str> {
    IGNORED_TLS_SETTINGS
        .into_iter()
        .filter(|name| lookup(env, name).is_some())
        .collect()
}

/// Default gRPC endpoint (used as is).
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// Default HTTP base endpoint (the traces path is appended).
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
/// Path appended to a base endpoint for HTTP transports.
pub const HTTP_TRACES_PATH: &str = "/v1/traces";
/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound on header entries accepted from configuration.
const MAX_HEADERS: usize = 64;

/// OTLP wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    /// The spec's default.
    HttpProtobuf,
    HttpJson,
}

impl OtlpProtocol {
    /// Parses the `OTEL_EXPORTER_OTLP_PROTOCOL` spelling.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            "http/json" => Some(OtlpProtocol::HttpJson),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::HttpJson => "http/json",
        }
    }

    pub fn is_http(self) -> bool {
        !matches!(self, OtlpProtocol::Grpc)
    }
}

/// Payload compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpCompression {
    Gzip,
}

/// Batch span processor settings (`OTEL_BSP_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Longest time a span waits in a partial batch.
    pub schedule_delay: Duration,
    /// Spans waiting for export; beyond this, new spans are dropped and counted.
    pub max_queue_size: usize,
    /// Spans per export request.
    pub max_export_batch_size: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            schedule_delay: Duration::from_millis(5000),
            max_queue_size: 2048,
            max_export_batch_size: 512,
        }
    }
}

/// Retry policy for transient export failures: exponential backoff with jitter.
///
/// Delay before retry `n` (0-based) is `min(max_backoff, initial_backoff * 2^n)` scaled by a random
/// factor in `[0.5, 1.0]`; a server-provided `Retry-After` raises it (capped at 30 s). A batch gets
/// at most `max_attempts` attempts in total and is then dropped and counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: 5,
        }
    }
}

/// Everything the OTLP sink needs. `Debug` shows header names, not values.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    pub protocol: OtlpProtocol,
    /// The URL requests go to: for HTTP it already includes `/v1/traces` when derived from a base.
    pub endpoint: String,
    /// Extra request headers / gRPC metadata, validated.
    pub headers: Vec<(String, String)>,
    /// Per-request timeout.
    pub timeout: Duration,
    pub compression: Option<OtlpCompression>,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<String> = self
            .headers
            .iter()
            .map(|(name, _)| format!("{name}={}", crate::telemetry::redact::REDACTED))
            .collect();
        f.debug_struct("OtlpConfig")
            .field("protocol", &self.protocol)
            .field("endpoint", &crate::telemetry::redact::url(&self.endpoint))
            .field("headers", &header_names)
            .field("timeout", &self.timeout)
            .field("compression", &self.compression)
            .field("batch", &self.batch)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Command-line values that take precedence over the environment. `None` means "not given".
/// `Debug` shows the endpoint redacted and no header value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OtlpOverrides {
    /// Base endpoint, like `OTEL_EXPORTER_OTLP_ENDPOINT`: for HTTP, `/v1/traces` is appended unless
    /// the value already ends with it.
    pub endpoint: Option<String>,
    /// `grpc`, `http/protobuf` or `http/json`.
    pub protocol: Option<String>,
    /// `k1=v1,k2=v2`; merged over the environment's headers (same key: the flag wins).
    pub headers: Option<String>,
    pub timeout: Option<Duration>,
    /// `gzip` or `none`.
    pub compression: Option<String>,
    pub schedule_delay: Option<Duration>,
    pub max_queue_size: Option<usize>,
    pub max_export_batch_size: Option<usize>,
}

impl std::fmt::Debug for OtlpOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpOverrides")
            .field(
                "endpoint",
                &self.endpoint.as_deref().map(crate::telemetry::redact::url),
            )
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &self
                    .headers
                    .as_ref()
                    .map(|_| crate::telemetry::redact::REDACTED),
            )
            .field("timeout", &self.timeout)
            .field("compression", &self.compression)
            .field("schedule_delay", &self.schedule_delay)
            .field("max_queue_size", &self.max_queue_size)
            .field("max_export_batch_size", &self.max_export_batch_size)
            .finish()
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{setting}: invalid value {value:?}: {reason}")]
pub struct ConfigError {
    /// The variable or flag the value came from.
    pub setting: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    fn new(setting: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            setting: setting.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// True when an OTLP endpoint is configured in the environment; otherwise the caller falls back
/// to the terminal sink.
pub fn otlp_configured(env: EnvLookup<'_>) -> bool {
    lookup(env, ENV_ENDPOINT).is_some() || lookup(env, ENV_TRACES_ENDPOINT).is_some()
}

/// A value for a setting and where it came from (for error messages).
struct Sourced {
    setting: String,
    value: String,
}

fn lookup(env: EnvLookup<'_>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Override first, then the signal-specific variable, then the generic one.
fn pick(
    env: EnvLookup<'_>,
    flag_name: &str,
    flag: Option<&String>,
    signal_var: Option<&str>,
    generic_var: &str,
) -> Option<Sourced> {
    if let Some(value) = flag.map(|v| v.trim()).filter(|v| !v.is_empty()) {
        return Some(Sourced {
            setting: flag_name.to_string(),
            value: value.to_string(),
        });
    }
    for var in signal_var.into_iter().chain(std::iter::once(generic_var)) {
        if let Some(value) = lookup(env, var) {
            return Some(Sourced {
                setting: var.to_string(),
                value,
            });
        }
    }
    None
}

impl OtlpConfig {
    /// Builds the configuration from environment variables (read through `env`) with `overrides`
    /// from the command line on top.
    pub fn from_env_and_overrides(
        env: EnvLookup<'_>,
        overrides: &OtlpOverrides,
    ) -> Result<OtlpConfig, ConfigError> {
        let ignored = ignored_tls_settings(env);
        if !ignored.is_empty() {
            // Names only: a value could be a path to a key.
            tracing::warn!(
                settings = %ignored.join(","),
                "OTLP TLS settings are not supported and are ignored: for TLS use an https:// \
                 endpoint with http/protobuf or http/json (server verified against the system's \
                 roots; no client certificates); grpc needs an http:// endpoint"
            );
        }
        let protocol = match pick(
            env,
            "--otlp-protocol",
            overrides.protocol.as_ref(),
            Some(ENV_TRACES_PROTOCOL),
            ENV_PROTOCOL,
        ) {
            Some(src) => OtlpProtocol::parse(&src.value).ok_or_else(|| {
                ConfigError::new(
                    &src.setting,
                    &src.value,
                    "not supported (use grpc, http/protobuf or http/json)",
                )
            })?,
            None => OtlpProtocol::HttpProtobuf,
        };

        let (endpoint, credentials) =
            split_credentials(&resolve_endpoint(env, overrides, protocol)?);

        let mut headers = Vec::new();
        if let Some(src) = pick(env, "", None, Some(ENV_TRACES_HEADERS), ENV_HEADERS) {
            headers = parse_headers(&src.setting, &src.value)?;
        }
        if let Some(flag) = overrides
            .headers
            .as_deref()
            .filter(|v| !v.trim().is_empty())
        {
            for (key, value) in parse_headers("--otlp-headers", flag)? {
                headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
                headers.push((key, value));
            }
        }
        if let Some(basic) = credentials
            && !headers.iter().any(|(k, _)| k == "authorization")
        {
            headers.push(("authorization".to_string(), basic));
        }

        let timeout = match overrides.timeout {
            Some(t) => positive_duration("--otlp-timeout", t)?,
            None => match pick(env, "", None, Some(ENV_TRACES_TIMEOUT), ENV_TIMEOUT) {
                Some(src) => parse_millis(&src)?,
                None => DEFAULT_TIMEOUT,
            },
        };

        let compression = match pick(
            env,
            "--otlp-compression",
            overrides.compression.as_ref(),
            Some(ENV_TRACES_COMPRESSION),
            ENV_COMPRESSION,
        ) {
            Some(src) => match src.value.to_ascii_lowercase().as_str() {
                "gzip" => Some(OtlpCompression::Gzip),
                "none" => None,
                _ => {
                    return Err(ConfigError::new(
                        &src.setting,
                        &src.value,
                        "not supported (use gzip or none)",
                    ));
                }
            },
            None => None,
        };

        let defaults = BatchConfig::default();
        let schedule_delay = match overrides.schedule_delay {
            Some(d) => positive_duration("--bsp-schedule-delay", d)?,
            None => match lookup(env, ENV_BSP_SCHEDULE_DELAY) {
                Some(value) => parse_millis(&Sourced {
                    setting: ENV_BSP_SCHEDULE_DELAY.to_string(),
                    value,
                })?,
                None => defaults.schedule_delay,
            },
        };
        let max_queue_size = size_setting(
            env,
            "--bsp-max-queue-size",
            overrides.max_queue_size,
            ENV_BSP_MAX_QUEUE_SIZE,
            defaults.max_queue_size,
        )?;
        let mut max_export_batch_size = size_setting(
            env,
            "--bsp-max-export-batch-size",
            overrides.max_export_batch_size,
            ENV_BSP_MAX_EXPORT_BATCH_SIZE,
            defaults.max_export_batch_size,
        )?;
        if max_export_batch_size > max_queue_size {
            tracing::warn!(
                max_export_batch_size,
                max_queue_size,
                "export batch size exceeds the queue size; using the queue size"
            );
            max_export_batch_size = max_queue_size;
        }

        Ok(OtlpConfig {
            protocol,
            endpoint,
            headers,
            timeout,
            compression,
            batch: BatchConfig {
                schedule_delay,
                max_queue_size,
                max_export_batch_size,
            },
            retry: RetryConfig::default(),
        })
    }
}

fn resolve_endpoint(
    env: EnvLookup<'_>,
    overrides: &OtlpOverrides,
    protocol: OtlpProtocol,
) -> Result<String, ConfigError> {
    let flag = overrides
        .endpoint
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let (setting, value) = if let Some(flag) = flag {
        check_url("--otlp-endpoint", flag)?;
        let value = if protocol.is_http() && !flag.trim_end_matches('/').ends_with(HTTP_TRACES_PATH)
        {
            join_traces_path(flag)
        } else {
            flag.to_string()
        };
        ("--otlp-endpoint", value)
    } else if let Some(value) = lookup(env, ENV_TRACES_ENDPOINT) {
        check_url(ENV_TRACES_ENDPOINT, &value)?;
        (ENV_TRACES_ENDPOINT, value)
    } else if let Some(value) = lookup(env, ENV_ENDPOINT) {
        check_url(ENV_ENDPOINT, &value)?;
        let value = if protocol.is_http() {
            join_traces_path(&value)
        } else {
            value
        };
        (ENV_ENDPOINT, value)
    } else if protocol.is_http() {
        ("default", join_traces_path(DEFAULT_HTTP_ENDPOINT))
    } else {
        ("default", DEFAULT_GRPC_ENDPOINT.to_string())
    };
    tracing::debug!(source = setting, endpoint = %crate::telemetry::redact::url(&value), protocol = protocol.as_str(), "OTLP endpoint");
    Ok(value)
}

/// The endpoint without userinfo, and the userinfo as an `Authorization: Basic` value (as
/// browsers and curl send it). The exporter's HTTP stack would drop the userinfo silently and log
/// it in connection-pool traces; a header is sent as intended and never logged.
fn split_credentials(endpoint: &str) -> (String, Option<String>) {
    use base64::Engine as _;
    let Some(parts) = crate::telemetry::redact::url_parts(endpoint) else {
        return (endpoint.to_string(), None);
    };
    let Some((userinfo, _)) = parts.authority.rsplit_once('@') else {
        return (endpoint.to_string(), None);
    };
    let host = crate::telemetry::redact::authority_without_userinfo(parts.authority);
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let pair = format!("{}:{}", percent_decode(user), percent_decode(password));
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    );
    let stripped = format!("{}://{host}{}", parts.scheme, parts.rest);
    (stripped, Some(basic))
}

fn join_traces_path(base: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), HTTP_TRACES_PATH)
}

fn check_url(setting: &str, raw: &str) -> Result<(), ConfigError> {
    let shown = crate::telemetry::redact::url(raw);
    let value: &str = &shown;
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .ok_or_else(|| ConfigError::new(setting, value, "must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if crate::telemetry::redact::authority_without_userinfo(authority).is_empty() {
        return Err(ConfigError::new(setting, value, "missing host"));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(setting, value, "contains whitespace"));
    }
    Ok(())
}

fn parse_millis(src: &Sourced) -> Result<Duration, ConfigError> {
    let millis: u64 = src.value.parse().map_err(|_| {
        ConfigError::new(
            &src.setting,
            &src.value,
            "expected an integer number of milliseconds",
        )
    })?;
    positive_duration(&src.setting, Duration::from_millis(millis))
}

fn positive_duration(setting: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::new(setting, "0", "must be greater than zero"));
    }
    Ok(d)
}

fn size_setting(
    env: EnvLookup<'_>,
    flag_name: &str,
    flag: Option<usize>,
    var: &str,
    default: usize,
) -> Result<usize, ConfigError> {
    let (setting, value) = match flag {
        Some(v) => (flag_name.to_string(), v),
        None => match lookup(env, var) {
            Some(raw) => {
                let v = raw
                    .parse::<usize>()
                    .map_err(|_| ConfigError::new(var, &raw, "expected a positive integer"))?;
                (var.to_string(), v)
            }
            None => return Ok(default),
        },
    };
    if value == 0 {
        return Err(ConfigError::new(&setting, "0", "must be greater than zero"));
    }
    Ok(value)
}

/// Parses `k1=v1,k2=v2` (values percent-decoded, surrounding spaces trimmed). Names must be HTTP
/// tokens and values visible ASCII, so they are valid both as HTTP headers and gRPC metadata.
pub fn parse_headers(setting: &str, input: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for member in input.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        // An error may show the name of a member, never its value.
        let Some((raw_key, raw_value)) = member.split_once('=') else {
            return Err(ConfigError::new(
                setting,
                REDACTED_MEMBER,
                "expected key=value",
            ));
        };
        let key = raw_key.trim().to_ascii_lowercase();
        if key.is_empty() || !key.bytes().all(is_token_byte) {
            return Err(ConfigError::new(
                setting,
                REDACTED_MEMBER,
                "invalid header name",
            ));
        }
        let shown = format!("{key}={}", crate::telemetry::redact::REDACTED);
        if key.ends_with("-bin") {
            return Err(ConfigError::new(
                setting,
                &shown,
                "binary (-bin) headers are not supported",
            ));
        }
        let value = percent_decode(raw_value.trim());
        if !value
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b))
        {
            return Err(ConfigError::new(
                setting,
                &shown,
                "header value must be visible ASCII",
            ));
        }
        headers.retain(|(k, _)| *k != key);
        headers.push((key, value));
        if headers.len() > MAX_HEADERS {
            return Err(ConfigError::new(
                setting,
                REDACTED_MEMBER,
                format!("more than {MAX_HEADERS} headers"),
            ));
        }
    }
    Ok(headers)
}

/// Shown in place of a header member an error cannot name safely.
const REDACTED_MEMBER: &str = "(value not shown)";

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Decodes `%XX` escapes; malformed escapes are kept literally. Invalid UTF-8 is replaced.
fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tls_setting_tests {
    use super::*;

    #[test]
    fn ignored_tls_settings_are_named() {
        let set = |name: &str| {
            (name == "OTEL_EXPORTER_OTLP_CERTIFICATE"
                || name == "OTEL_EXPORTER_OTLP_TRACES_INSECURE")
                .then(|| "x".to_string())
                .or_else(|| (name == "OTEL_EXPORTER_OTLP_CLIENT_KEY").then(|| " ".to_string()))
        };
        assert_eq!(
            ignored_tls_settings(&set),
            vec![
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_TRACES_INSECURE"
            ]
        );
        assert!(ignored_tls_settings(&|_| None).is_empty());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn overrides_debug_never_shows_credentials() {
        let overrides = OtlpOverrides {
            endpoint: Some("http://u:pw1@collector:4318/?sig=pw3".into()),
            headers: Some("x-api-key=pw2".into()),
            ..Default::default()
        };
        let shown = format!("{overrides:?}");
        for secret in ["pw1", "pw2", "pw3"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("collector:4318"), "{shown}");
    }

    #[test]
    fn check_url_needs_a_host_after_the_userinfo_and_never_shows_it() {
        for raw in [
            "http://u:pw1@/x",
            "https://u:pw1@/x",
            "https://u:pw1@",
            "http://@",
        ] {
            let err = check_url("S", raw).expect_err(raw);
            assert_eq!(err.reason, "missing host", "{raw}");
            assert!(!err.value.contains("pw1"), "{raw}: {err:?}");
        }
        for raw in ["http://u:pw1@h/x", "https://u:pw1@h:4318", "https://h"] {
            assert!(check_url("S", raw).is_ok(), "{raw}");
        }
        let err = check_url("S", "ftp://u:pw1@h").expect_err("scheme");
        assert!(!err.value.contains("pw1"), "{err:?}");
    }

    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)], overrides: &OtlpOverrides) -> Result<OtlpConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |name: &str| map.get(name).cloned();
        OtlpConfig::from_env_and_overrides(&env, overrides)
    }

    #[test]
    fn defaults_follow_the_spec() {
        let cfg = config(&[], &OtlpOverrides::default()).unwrap();
        assert_eq!(cfg.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(cfg.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(cfg.timeout, Duration::from_secs(10));
        assert_eq!(cfg.compression, None);
        assert!(cfg.headers.is_empty());
        assert_eq!(cfg.batch.schedule_delay, Duration::from_millis(5000));
        assert_eq!(cfg.batch.max_queue_size, 2048);
        assert_eq!(cfg.batch.max_export_batch_size, 512);
        assert_eq!(cfg.retry, RetryConfig::default());
    }

    #[test]
    fn grpc_default_endpoint_has_no_path() {
        let cfg = config(&[(ENV_PROTOCOL, "grpc")], &OtlpOverrides::default()).unwrap();
        assert_eq!(cfg.protocol, OtlpProtocol::Grpc);
        assert_eq!(cfg.endpoint, "http://localhost:4317");
        let cfg = config(
            &[(ENV_PROTOCOL, "grpc"), (ENV_ENDPOINT, "http://col:4317/")],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(cfg.endpoint, "http://col:4317/");
    }

    #[test]
    fn http_base_endpoint_gets_traces_path_once() {
        let cfg = config(
            &[(ENV_ENDPOINT, "http://collector:4318/")],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(cfg.endpoint, "http://collector:4318/v1/traces");
        let cfg = config(
            &[(ENV_ENDPOINT, "https://gw.example/otlp")],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(cfg.endpoint, "https://gw.example/otlp/v1/traces");
    }

    #[test]
    fn traces_endpoint_is_used_as_is_and_beats_the_base() {
        let cfg = config(
            &[
                (ENV_ENDPOINT, "http://a:4318"),
                (ENV_TRACES_ENDPOINT, "http://b:9999/custom"),
            ],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(cfg.endpoint, "http://b:9999/custom");
    }

    #[test]
    fn flag_endpoint_beats_env_and_is_a_base() {
        let overrides = OtlpOverrides {
            endpoint: Some("http://flag:4318".into()),
            ..Default::default()
        };
        let cfg = config(&[(ENV_TRACES_ENDPOINT, "http://b:1/x")], &overrides).unwrap();
        assert_eq!(cfg.endpoint, "http://flag:4318/v1/traces");
        let overrides = OtlpOverrides {
            endpoint: Some("http://flag:4318/v1/traces".into()),
            ..Default::default()
        };
        assert_eq!(
            config(&[], &overrides).unwrap().endpoint,
            "http://flag:4318/v1/traces"
        );
    }

    #[test]
    fn protocols_parse_and_unknown_is_a_clear_error() {
        let cfg = config(&[(ENV_PROTOCOL, "http/json")], &Default::default()).unwrap();
        assert_eq!(cfg.protocol, OtlpProtocol::HttpJson);
        let cfg = config(
            &[
                (ENV_PROTOCOL, "grpc"),
                (ENV_TRACES_PROTOCOL, "http/protobuf"),
            ],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            cfg.protocol,
            OtlpProtocol::HttpProtobuf,
            "signal-specific wins"
        );
        let err = config(&[(ENV_PROTOCOL, "thrift")], &Default::default()).unwrap_err();
        assert_eq!(err.setting, ENV_PROTOCOL);
        assert!(err.to_string().contains("not supported"), "{err}");
        let overrides = OtlpOverrides {
            protocol: Some("grpc".into()),
            ..Default::default()
        };
        let cfg = config(&[(ENV_PROTOCOL, "http/json")], &overrides).unwrap();
        assert_eq!(cfg.protocol, OtlpProtocol::Grpc);
    }

    #[test]
    fn headers_parse_decode_and_merge_with_flag() {
        let overrides = OtlpOverrides {
            headers: Some("Authorization=flag,x-extra=1".into()),
            ..Default::default()
        };
        let cfg = config(
            &[(
                ENV_HEADERS,
                " authorization = Basic%20abc%3D , x-tenant=t1 ",
            )],
            &overrides,
        )
        .unwrap();
        assert_eq!(
            cfg.headers,
            vec![
                ("x-tenant".to_string(), "t1".to_string()),
                ("authorization".to_string(), "flag".to_string()),
                ("x-extra".to_string(), "1".to_string()),
            ]
        );
        let cfg = config(&[(ENV_HEADERS, "a=Basic%20abc%3D")], &Default::default()).unwrap();
        assert_eq!(
            cfg.headers,
            vec![("a".to_string(), "Basic abc=".to_string())]
        );
        assert!(config(&[(ENV_HEADERS, "novalue")], &Default::default()).is_err());
        assert!(config(&[(ENV_HEADERS, "bad name=x")], &Default::default()).is_err());
        assert!(config(&[(ENV_HEADERS, "k=%0a")], &Default::default()).is_err());
    }

    #[test]
    fn errors_and_debug_never_show_credentials() {
        let secret = "s3cr3t-value";
        let bad_headers = [
            format!("api-key={secret}%0a"),
            format!("Bearer {secret}"),
            format!("bad name={secret}"),
            format!("x-bin={secret}"),
            (0..=MAX_HEADERS)
                .map(|i| format!("h{i}={secret}"))
                .collect::<Vec<_>>()
                .join(","),
        ];
        for headers in &bad_headers {
            let err = config(&[(ENV_HEADERS, headers)], &Default::default()).unwrap_err();
            assert!(!format!("{err} {err:?}").contains(secret), "{err}");
            let flag = OtlpOverrides {
                headers: Some(headers.clone()),
                ..Default::default()
            };
            let err = config(&[], &flag).unwrap_err();
            assert!(!format!("{err} {err:?}").contains(secret), "{err}");
        }
        let err = config(&[(ENV_HEADERS, "api-key=a\u{1}b")], &Default::default()).unwrap_err();
        assert!(
            err.to_string().contains("api-key"),
            "names the header: {err}"
        );

        for endpoint in [
            format!("ftp://user:{secret}@collector:4318"),
            format!("http://user:{secret}@collector:4318/ x"),
            format!("http://collector:4318/?api_key={secret} x"),
        ] {
            let err = config(&[(ENV_ENDPOINT, &endpoint)], &Default::default()).unwrap_err();
            assert!(!format!("{err} {err:?}").contains(secret), "{err}");
        }

        let cfg = config(
            &[
                (
                    ENV_TRACES_ENDPOINT,
                    &format!("https://user:{secret}@collector:4318/v1/traces?api_key={secret}"),
                ),
                (ENV_HEADERS, &format!("api-key={secret}")),
            ],
            &Default::default(),
        )
        .unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("api-key"), "{shown}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(
            shown.contains("https://collector:4318/v1/traces?api_key=REDACTED"),
            "{shown}"
        );
    }

    #[test]
    fn endpoint_userinfo_becomes_a_basic_authorization_header() {
        let cfg = config(
            &[(ENV_ENDPOINT, "https://ingest:p%40ss@collector:4318/otlp")],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(cfg.endpoint, "https://collector:4318/otlp/v1/traces");
        // base64("ingest:p@ss")
        assert_eq!(
            cfg.headers,
            vec![(
                "authorization".to_string(),
                "Basic aW5nZXN0OnBAc3M=".to_string()
            )]
        );
        let cfg = config(
            &[
                (ENV_TRACES_ENDPOINT, "http://u:p@collector:4318/v1/traces"),
                (ENV_HEADERS, "Authorization=Bearer%20t"),
            ],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(cfg.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(
            cfg.headers,
            vec![("authorization".to_string(), "Bearer t".to_string())],
            "a configured Authorization header wins"
        );
        let (plain, none) = split_credentials("http://collector:4318/v1/traces?a=b@c");
        assert_eq!(plain, "http://collector:4318/v1/traces?a=b@c");
        assert_eq!(none, None);
    }

    #[test]
    fn percent_decode_is_total() {
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn timeout_compression_and_batch_settings() {
        let cfg = config(
            &[
                (ENV_TIMEOUT, "2500"),
                (ENV_COMPRESSION, "gzip"),
                (ENV_BSP_SCHEDULE_DELAY, "200"),
                (ENV_BSP_MAX_QUEUE_SIZE, "100"),
                (ENV_BSP_MAX_EXPORT_BATCH_SIZE, "1000"),
            ],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(cfg.timeout, Duration::from_millis(2500));
        assert_eq!(cfg.compression, Some(OtlpCompression::Gzip));
        assert_eq!(cfg.batch.schedule_delay, Duration::from_millis(200));
        assert_eq!(cfg.batch.max_queue_size, 100);
        assert_eq!(
            cfg.batch.max_export_batch_size, 100,
            "clamped to the queue size"
        );

        let overrides = OtlpOverrides {
            timeout: Some(Duration::from_secs(3)),
            compression: Some("none".into()),
            max_queue_size: Some(10),
            max_export_batch_size: Some(5),
            schedule_delay: Some(Duration::from_millis(50)),
            ..Default::default()
        };
        let cfg = config(
            &[(ENV_TIMEOUT, "2500"), (ENV_COMPRESSION, "gzip")],
            &overrides,
        )
        .unwrap();
        assert_eq!(cfg.timeout, Duration::from_secs(3));
        assert_eq!(cfg.compression, None);
        assert_eq!(
            cfg.batch,
            BatchConfig {
                schedule_delay: Duration::from_millis(50),
                max_queue_size: 10,
                max_export_batch_size: 5
            }
        );

        assert!(config(&[(ENV_TIMEOUT, "10s")], &Default::default()).is_err());
        assert!(config(&[(ENV_COMPRESSION, "zstd")], &Default::default()).is_err());
        assert!(config(&[(ENV_BSP_MAX_QUEUE_SIZE, "0")], &Default::default()).is_err());
        assert!(config(&[(ENV_BSP_SCHEDULE_DELAY, "-1")], &Default::default()).is_err());
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        let err = config(&[(ENV_ENDPOINT, "collector:4318")], &Default::default()).unwrap_err();
        assert_eq!(err.setting, ENV_ENDPOINT);
        assert!(config(&[(ENV_ENDPOINT, "http://")], &Default::default()).is_err());
    }

    #[test]
    fn otlp_configured_needs_a_non_empty_endpoint_variable() {
        let none = |_: &str| None;
        assert!(!otlp_configured(&none));
        let empty = |_: &str| Some(String::new());
        assert!(!otlp_configured(&empty));
        let base = |n: &str| (n == ENV_ENDPOINT).then(|| "http://c:4318".to_string());
        assert!(otlp_configured(&base));
        let traces =
            |n: &str| (n == ENV_TRACES_ENDPOINT).then(|| "http://c:4318/v1/traces".to_string());
        assert!(otlp_configured(&traces));
    }
}
