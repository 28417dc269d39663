//! The HTTP client handed to the OTLP exporter: a `reqwest` client that also remembers the outcome
//! of its last request (status code, `Retry-After`, transport error), because the exporter reports
//! failures only as text and drops `Retry-After` when its own retries are disabled.
//!
//! The client never follows redirects: a redirect would carry the configured headers (API keys,
//! tenant tokens) to whatever host the `Location` names. A 3xx answer is a failed export, counted
//! like any other. Transport errors are logged without their URL (it may carry credentials).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

use super::retry::parse_retry_after;

/// What happened to the last request sent through an [`ObservedHttpClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpAttemptOutcome {
    /// A response arrived (any status).
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// No response: connection failure, timeout, reset.
    Transport,
}

/// Shared slot holding the last outcome.
pub type OutcomeSlot = Arc<Mutex<Option<HttpAttemptOutcome>>>;

/// `reqwest::Client` plus an outcome slot.
#[derive(Debug)]
pub struct ObservedHttpClient {
    inner: reqwest::Client,
    last_outcome: OutcomeSlot,
}

impl ObservedHttpClient {
    /// Builds a client whose requests (including reading the body) time out after `timeout`
    /// and that does not follow redirects.
    pub fn new(timeout: Duration) -> Result<(Self, OutcomeSlot), reqwest::Error> {
        let inner = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let last_outcome: OutcomeSlot = Arc::default();
        Ok((
            ObservedHttpClient {
                inner,
                last_outcome: Arc::clone(&last_outcome),
            },
            last_outcome,
        ))
    }

    fn record(&self, outcome: HttpAttemptOutcome) {
        if let Ok(mut slot) = self.last_outcome.lock() {
            *slot = Some(outcome);
        }
    }
}

/// Takes the recorded outcome, leaving the slot empty for the next attempt.
pub fn take_outcome(slot: &OutcomeSlot) -> Option<HttpAttemptOutcome> {
    slot.lock().ok().and_then(|mut s| s.take())
}

// The trait is declared with `async_trait`; this is the signature that macro generates.
impl HttpClient for ObservedHttpClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let result = HttpClient::send_bytes(&self.inner, request).await;
            match &result {
                Ok(response) => {
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    self.record(HttpAttemptOutcome::Status {
                        code: response.status().as_u16(),
                        retry_after,
                    });
                }
                Err(error) => {
                    tracing::debug!(error = %without_url(error), "OTLP HTTP request failed");
                    self.record(HttpAttemptOutcome::Transport);
                }
            }
            result
        })
    }
}

/// An error's text without the request URL reqwest adds to it; other errors by their chain.
fn without_url(error: &HttpError) -> String {
    match error.downcast_ref::<reqwest::Error>() {
        Some(e) => {
            let mut text = match e.url() {
                Some(url) => e.to_string().replace(url.as_str(), "(url not shown)"),
                None => e.to_string(),
            };
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            crate::redact::urls_in(&text)
        }
        None => crate::redact::urls_in(&error.to_string()),
    }
}
