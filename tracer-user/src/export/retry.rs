//! Which export failures are worth retrying, and how long to wait before the next attempt.
//!
//! Retried (transient): HTTP 429, 502, 503, 504 and transport errors (connection refused or reset,
//! timeouts); gRPC transport failures mid-call (reported as UNKNOWN with a source error), UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, CANCELLED, OUT_OF_RANGE, DATA_LOSS.
//! Everything else (other 4xx/5xx, other gRPC codes including RESOURCE_EXHAUSTED, whose retry
//! hint we do not read, and encoding errors) is permanent: the batch is dropped and counted.
//! HTTP `Retry-After` in delta-seconds form is honoured (capped at [`MAX_SERVER_DELAY`]); the
//! HTTP-date form falls back to the computed backoff.

use std::time::Duration;

use super::config::RetryConfig;

/// Longest server-requested delay we honour.
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(30);

/// Outcome class of a failed export attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Worth retrying; `retry_after` is the server's requested delay, if any.
    Transient { retry_after: Option<Duration> },
    /// Retrying cannot help.
    Permanent,
}

/// Classifies an HTTP response status that was not a success.
pub fn classify_http_status(status: u16, retry_after: Option<Duration>) -> FailureClass {
    match status {
        429 | 502 | 503 | 504 => FailureClass::Transient { retry_after },
        _ => FailureClass::Permanent,
    }
}

/// Classifies a failed gRPC call by its status code (OTLP/gRPC's retryable codes).
pub fn classify_grpc_code(code: tonic::Code) -> FailureClass {
    use tonic::Code;
    match code {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled
        | Code::OutOfRange
        | Code::DataLoss => FailureClass::Transient { retry_after: None },
        _ => FailureClass::Permanent,
    }
}

/// Classifies a failed gRPC call. A transport failure mid-call (connection reset or closed, an
/// I/O error: tonic reports it as `Unknown` carrying the underlying error as its source, no
/// `grpc-status` received) is transient, like the same failure over HTTP; an `Unknown` status the
/// server sent (no source) stays permanent.
pub fn classify_grpc_status(status: &tonic::Status) -> FailureClass {
    if status.code() == tonic::Code::Unknown && std::error::Error::source(status).is_some() {
        return FailureClass::Transient { retry_after: None };
    }
    classify_grpc_code(status.code())
}

/// Parses a `Retry-After` value in delta-seconds form.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u64>().ok().map(Duration::from_secs)
}

/// Delay before retry number `retry_index` (0 for the first retry). `jitter` in `[0, 1]` picks a
/// point in the upper half of the exponential delay (so delays never collapse to zero).
pub fn backoff_delay(
    policy: &RetryConfig,
    retry_index: u32,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let factor = 2u32.saturating_pow(retry_index.min(31));
    let exponential = policy
        .initial_backoff
        .saturating_mul(factor)
        .min(policy.max_backoff);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let delay = exponential.mul_f64(0.5 + 0.5 * jitter);
    match retry_after {
        Some(requested) => delay.max(requested.min(MAX_SERVER_DELAY)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses() {
        for code in [429, 502, 503, 504] {
            assert_eq!(
                classify_http_status(code, None),
                FailureClass::Transient { retry_after: None },
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 413, 500, 501] {
            assert_eq!(
                classify_http_status(code, None),
                FailureClass::Permanent,
                "{code}"
            );
        }
        assert_eq!(
            classify_http_status(429, Some(Duration::from_secs(3))),
            FailureClass::Transient {
                retry_after: Some(Duration::from_secs(3))
            }
        );
    }

    #[test]
    fn grpc_codes() {
        use tonic::Code;
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Cancelled,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert_eq!(
                classify_grpc_code(code),
                FailureClass::Transient { retry_after: None },
                "{code:?}"
            );
        }
        for code in [
            Code::Ok,
            Code::Unknown,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Unimplemented,
        ] {
            assert_eq!(
                classify_grpc_code(code),
                FailureClass::Permanent,
                "{code:?}"
            );
        }
    }

    #[test]
    fn grpc_transport_failure_mid_call_is_transient() {
        use tonic::{Code, Status};
        // What tonic makes of an I/O or hyper error during the call: Unknown, with the source.
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let transport = Status::from_error(Box::new(reset));
        assert_eq!(transport.code(), Code::Unknown);
        assert_eq!(
            classify_grpc_status(&transport),
            FailureClass::Transient { retry_after: None }
        );
        // An Unknown status the server sent has no source: permanent, as before.
        let sent = Status::new(Code::Unknown, "handler failed");
        assert_eq!(classify_grpc_status(&sent), FailureClass::Permanent);
        assert_eq!(
            classify_grpc_status(&Status::unavailable("down")),
            FailureClass::Transient { retry_after: None }
        );
        assert_eq!(
            classify_grpc_status(&Status::invalid_argument("bad")),
            FailureClass::Permanent
        );
    }

    #[test]
    fn retry_after_delta_seconds_only() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("99999999999999999999"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_bounded_jitter() {
        let policy = RetryConfig::default();
        let max = |i| backoff_delay(&policy, i, 1.0, None);
        let min = |i| backoff_delay(&policy, i, 0.0, None);
        assert_eq!(max(0), Duration::from_millis(500));
        assert_eq!(min(0), Duration::from_millis(250));
        assert_eq!(max(1), Duration::from_secs(1));
        assert_eq!(max(3), Duration::from_secs(4));
        assert_eq!(max(10), Duration::from_secs(30));
        assert_eq!(max(1000), Duration::from_secs(30));
        assert_eq!(min(1000), Duration::from_secs(15));
        let mid = backoff_delay(&policy, 2, 0.5, None);
        assert!(mid > min(2) && mid < max(2));
        assert_eq!(backoff_delay(&policy, 0, f64::NAN, None), max(0));
    }

    #[test]
    fn retry_after_raises_the_delay_up_to_the_cap() {
        let policy = RetryConfig::default();
        assert_eq!(
            backoff_delay(&policy, 0, 1.0, Some(Duration::from_secs(4))),
            Duration::from_secs(4)
        );
        assert_eq!(
            backoff_delay(&policy, 0, 1.0, Some(Duration::from_secs(3600))),
            MAX_SERVER_DELAY
        );
        assert_eq!(
            backoff_delay(&policy, 3, 1.0, Some(Duration::from_millis(1))),
            Duration::from_secs(4)
        );
    }
}
