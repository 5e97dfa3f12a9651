//! The policy of a model call: the budget, the deadlines, the retries and the fallback.
//!
//! # Expected flow
//! 1. The conversation is trimmed to `token_budget` (minus the system prompt and the tools), once.
//! 2. The primary is asked; each attempt under `request_timeout` (answer body included). A
//!    retryable failure ([`LlmError::retryable`]: 429, 500, 502, 503, 504, 529, network errors,
//!    timeouts) is retried up to `max_retries` times after the server's `Retry-After` or else an
//!    exponential backoff with full jitter. Other failures end the call.
//! 3. When the primary stays unavailable ([`LlmError::unavailable`]: 429, 503, 529 or timeouts)
//!    and `[llm.fallback]` exists, the fallback is asked the same way. Nothing is remembered: the
//!    next call asks the primary first again.
//! 4. The whole call is bounded by `run_timeout`, and by the cancel token.
//!
//! # Guarantees
//! - With a fallback, the primary stops retrying early enough to leave the fallback one
//!   `request_timeout` (at most half of `run_timeout`): a hanging primary cannot use up the
//!   whole run.
//! - A server's wait hint beats the backoff; one that does not fit in the time left ends the
//!   retries of that provider at once (the fallback does not wait for it).
//! - The API key is sent only as a header, marked sensitive; it is in no error, log line or
//!   `Debug` output (a provider's error text that quotes it is scrubbed).
//! - Answers are read up to [`MAX_BODY_BYTES`]; no redirect is followed.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::{self, Trimmed};
use crate::config::{Endpoint, LlmConfig, Provider};
use crate::error::LlmError;
use crate::model::{Request, Response};
use crate::retry::{Backoff, parse_retry_after};
use crate::transport::{Transport, TransportError};
use crate::{anthropic, openai};

pub use crate::transport::MAX_BODY_BYTES;

/// The longest provider error text kept in an error.
const MAX_MESSAGE_CHARS: usize = 300;

/// Which of the configured providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Primary,
    Fallback,
}

impl Which {
    pub fn as_str(self) -> &'static str {
        match self {
            Which::Primary => "primary",
            Which::Fallback => "fallback",
        }
    }
}

/// One HTTP attempt, for the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub which: Which,
    pub provider: Provider,
    pub model: String,
    /// `None`: it answered.
    pub error: Option<LlmError>,
    pub latency: Duration,
}

/// A call that was answered.
#[derive(Debug, Clone)]
pub struct Completion {
    pub response: Response,
    /// Who answered.
    pub answered_by: Which,
    /// The fallback was asked (it answered, since this is a success).
    pub fallback_used: bool,
    /// Every attempt, in order, both providers.
    pub attempts: Vec<Attempt>,
    /// The whole call, backoffs included.
    pub latency: Duration,
    /// What the token budget did to the conversation.
    pub trimmed: Trimmed,
}

/// A call that was not answered, with what was tried (for the trace).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    pub error: LlmError,
    pub attempts: Vec<Attempt>,
    pub fallback_used: bool,
    pub latency: Duration,
}

/// The model client of `[llm]`: cheap to share (`&self` everywhere), one per daemon.
#[derive(Debug)]
pub struct LlmClient {
    config: LlmConfig,
    transport: Transport,
    backoff: Backoff,
}

impl LlmClient {
    pub fn new(config: LlmConfig) -> Result<LlmClient, LlmError> {
        let transport =
            Transport::new(MAX_BODY_BYTES).map_err(|e| LlmError::Client(e.to_string()))?;
        Ok(LlmClient {
            config,
            transport,
            backoff: Backoff::default(),
        })
    }

    /// The same client with another backoff (tests shorten it).
    pub fn with_backoff(mut self, backoff: Backoff) -> LlmClient {
        self.backoff = backoff;
        self
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// Asks the model (see the module's flow).
    pub async fn complete(
        &self,
        request: &Request,
        cancel: &CancellationToken,
    ) -> Result<Completion, Failure> {
        let started = Instant::now();
        // A run_timeout of "1000000y" must not overflow the clock: a year is as good as forever.
        let deadline = started
            .checked_add(self.config.run_timeout)
            .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600));
        let fixed = budget::estimate_text(&request.system)
            .saturating_add(budget::estimate_tools(&request.tools));
        let (messages, trimmed) = budget::trim(
            &request.messages,
            self.config.token_budget.saturating_sub(fixed),
        );
        if trimmed.dropped_messages > 0 {
            tracing::info!(
                dropped_messages = trimmed.dropped_messages,
                dropped_tokens = trimmed.dropped_tokens,
                kept_tokens = trimmed.kept_tokens,
                "the conversation was trimmed to the token budget"
            );
        }
        let request = Request {
            messages,
            ..request.clone()
        };
        let mut attempts = Vec::new();
        let mut fallback_used = false;
        let outcome = {
            let run = self.run(&request, deadline, &mut attempts, &mut fallback_used);
            tokio::select! {
                _ = cancel.cancelled() => Err(LlmError::Cancelled),
                r = tokio::time::timeout_at(deadline, run) => r.unwrap_or(Err(LlmError::RunTimeout {
                    after: self.config.run_timeout,
                })),
            }
        };
        let latency = started.elapsed();
        match outcome {
            Ok((response, answered_by)) => Ok(Completion {
                response,
                answered_by,
                fallback_used,
                attempts,
                latency,
                trimmed,
            }),
            Err(error) => Err(Failure {
                error,
                attempts,
                fallback_used,
                latency,
            }),
        }
    }

    async fn run(
        &self,
        request: &Request,
        deadline: Instant,
        attempts: &mut Vec<Attempt>,
        fallback_used: &mut bool,
    ) -> Result<(Response, Which), LlmError> {
        let primary = &self.config.primary;
        let primary_deadline = match &self.config.fallback {
            Some(f) => {
                let reserve = f.request_timeout.min(self.config.run_timeout / 2);
                deadline.checked_sub(reserve).unwrap_or(deadline)
            }
            None => deadline,
        };
        let error = match self
            .endpoint(Which::Primary, primary, request, primary_deadline, attempts)
            .await
        {
            Ok(response) => return Ok((response, Which::Primary)),
            Err(e) => e,
        };
        let fallback = match &self.config.fallback {
            Some(f) if error.unavailable() => f,
            _ => return Err(self.final_error(error, deadline)),
        };
        tracing::warn!(
            primary = %primary.provider,
            primary_model = %primary.model,
            fallback = %fallback.provider,
            fallback_model = %fallback.model,
            error = %error,
            "the primary model provider is unavailable; asking the fallback"
        );
        *fallback_used = true;
        self.endpoint(Which::Fallback, fallback, request, deadline, attempts)
            .await
            .map(|r| (r, Which::Fallback))
            .map_err(|e| self.final_error(e, deadline))
    }

    /// A failure that came with the run's deadline is the run's timeout.
    fn final_error(&self, error: LlmError, deadline: Instant) -> LlmError {
        if Instant::now() >= deadline {
            LlmError::RunTimeout {
                after: self.config.run_timeout,
            }
        } else {
            error
        }
    }

    /// One provider, with its retries, until `deadline`.
    async fn endpoint(
        &self,
        which: Which,
        endpoint: &Endpoint,
        request: &Request,
        deadline: Instant,
        attempts: &mut Vec<Attempt>,
    ) -> Result<Response, LlmError> {
        let max_tokens = request
            .max_tokens
            .map_or(endpoint.max_tokens, |m| m.min(endpoint.max_tokens))
            .max(1);
        let (url, body) = match endpoint.provider {
            Provider::Anthropic => (
                anthropic::url(&endpoint.base_url),
                anthropic::body(&endpoint.model, request, max_tokens),
            ),
            Provider::Openaicompat => (
                openai::url(&endpoint.base_url),
                openai::body(&endpoint.model, request, max_tokens),
            ),
        };
        let body = Bytes::from(body.to_string());
        let headers = headers(endpoint)?;
        let mut retry = 0u32;
        loop {
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            let per_attempt = endpoint.request_timeout.min(remaining);
            let result = if per_attempt.is_zero() {
                Err(self.timeout(endpoint, endpoint.request_timeout))
            } else {
                tokio::time::timeout(
                    per_attempt,
                    self.attempt(endpoint, &url, headers.clone(), body.clone()),
                )
                .await
                .unwrap_or_else(|_| Err(self.timeout(endpoint, per_attempt)))
            };
            attempts.push(Attempt {
                which,
                provider: endpoint.provider,
                model: endpoint.model.clone(),
                error: result.as_ref().err().cloned(),
                latency: now.elapsed(),
            });
            let error = match result {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            if !error.retryable() || retry >= endpoint.max_retries {
                return Err(error);
            }
            let wait = error
                .retry_after()
                .unwrap_or_else(|| self.backoff.delay(retry));
            if wait >= deadline.saturating_duration_since(Instant::now()) {
                // The wait does not fit in the time left: give up on this provider now.
                return Err(error);
            }
            tracing::warn!(
                provider = %endpoint.provider,
                model = %endpoint.model,
                which = which.as_str(),
                retry = retry + 1,
                max_retries = endpoint.max_retries,
                wait_ms = wait.as_millis() as u64,
                error = %error,
                "retrying the model call"
            );
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }

    fn timeout(&self, endpoint: &Endpoint, after: Duration) -> LlmError {
        LlmError::Timeout {
            provider: endpoint.provider,
            model: endpoint.model.clone(),
            after,
        }
    }

    /// One HTTP exchange, classified.
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        url: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Response, LlmError> {
        let provider = endpoint.provider;
        let model = endpoint.model.clone();
        let key = endpoint.api_key.as_ref().map(|k| k.expose());
        let answer = match self.transport.post(url, headers, body).await {
            Ok(answer) => answer,
            Err(TransportError::TooLarge) => {
                return Err(LlmError::TooLarge {
                    provider,
                    model,
                    limit: MAX_BODY_BYTES,
                });
            }
            Err(TransportError::Network(detail)) => {
                return Err(LlmError::Network {
                    provider,
                    model,
                    detail: scrub(&detail, key),
                });
            }
        };
        if (200..300).contains(&answer.status) {
            let parsed = match provider {
                Provider::Anthropic => anthropic::parse(&answer.body),
                Provider::Openaicompat => openai::parse(&answer.body),
            };
            return parsed.map_err(|detail| LlmError::Malformed {
                provider,
                model,
                detail: scrub(&detail, key),
            });
        }
        let message = match provider {
            Provider::Anthropic => anthropic::error_message(&answer.body),
            Provider::Openaicompat => openai::error_message(&answer.body),
        }
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
        let retry_after = answer
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        Err(LlmError::Status {
            provider,
            model,
            status: answer.status,
            message: scrub(&message, key),
            retry_after,
        })
    }
}

/// The provider's headers: the key only here, marked sensitive (hyper's HTTP/2 never indexes it,
/// and it prints as "Sensitive" in a debug dump).
fn headers(endpoint: &Endpoint) -> Result<Vec<(HeaderName, HeaderValue)>, LlmError> {
    let invalid_key = || {
        LlmError::Client(format!(
            "the api_key of {} ({}) is not a valid HTTP header value",
            endpoint.provider, endpoint.model
        ))
    };
    let mut headers = Vec::new();
    match endpoint.provider {
        Provider::Anthropic => {
            headers.push((
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(anthropic::VERSION),
            ));
            if let Some(key) = &endpoint.api_key {
                let mut value = HeaderValue::from_str(key.expose()).map_err(|_| invalid_key())?;
                value.set_sensitive(true);
                headers.push((HeaderName::from_static("x-api-key"), value));
            }
        }
        Provider::Openaicompat => {
            if let Some(key) = &endpoint.api_key {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| invalid_key())?;
                value.set_sensitive(true);
                headers.push((http::header::AUTHORIZATION, value));
            }
        }
    }
    Ok(headers)
}

/// A provider's text made fit for an error: the key removed, control characters dropped,
/// shortened.
fn scrub(text: &str, key: Option<&str>) -> String {
    let text = match key {
        Some(key) if !key.is_empty() => text.replace(key, "[redacted]"),
        _ => text.to_owned(),
    };
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if text.chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_the_key_and_control_characters() {
        assert_eq!(
            scrub("bad key sk-123\n\x1b[31mred", Some("sk-123")),
            "bad key [redacted]  [31mred"
        );
        assert_eq!(scrub(&"x".repeat(400), None).chars().count(), 301);
    }

    #[test]
    fn the_key_goes_in_one_sensitive_header() {
        let mut e = Endpoint::new(Provider::Openaicompat, "m", "http://h/v1");
        e.api_key = Some(productbuilder_settings::Secret::new("sk-1"));
        let h = headers(&e).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].0, http::header::AUTHORIZATION);
        assert!(h[0].1.is_sensitive());
        assert!(!format!("{:?}", h[0].1).contains("sk-1"));
        e.api_key = Some(productbuilder_settings::Secret::new("bad\nkey"));
        let err = headers(&e).unwrap_err().to_string();
        assert!(!err.contains("bad"), "{err}");
    }
}
