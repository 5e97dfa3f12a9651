//! What can go wrong in a model call, classified once: [`LlmError::retryable`] and
//! [`LlmError::unavailable`] are the only rules the client's policy reads.

use std::time::Duration;

use crate::config::Provider;

/// One failed call (or attempt). Messages name the provider and model, never the API key or the
/// URL (which may carry credentials); a provider's own error text is shortened and scrubbed of
/// the key before it gets here.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum LlmError {
    #[error("{provider} ({model}) answered HTTP {status}: {message}")]
    Status {
        provider: Provider,
        model: String,
        status: u16,
        /// The provider's error message, shortened.
        message: String,
        /// The server's `Retry-After`, read.
        retry_after: Option<Duration>,
    },
    #[error("{provider} ({model}) did not answer within {}s (request_timeout)", after.as_secs_f64())]
    Timeout {
        provider: Provider,
        model: String,
        after: Duration,
    },
    #[error("{provider} ({model}) could not be reached: {detail}")]
    Network {
        provider: Provider,
        model: String,
        detail: String,
    },
    #[error("{provider} ({model}) answered what is not a valid response: {detail}")]
    Malformed {
        provider: Provider,
        model: String,
        detail: String,
    },
    #[error("{provider} ({model}) answered more than {limit} bytes; the answer was dropped")]
    TooLarge {
        provider: Provider,
        model: String,
        limit: usize,
    },
    #[error("the model call took longer than {}s ([llm] run_timeout)", after.as_secs_f64())]
    RunTimeout { after: Duration },
    #[error("the model call was cancelled")]
    Cancelled,
    #[error("the HTTP client could not be built: {0}")]
    Client(String),
}

impl LlmError {
    /// Worth another attempt at the same provider: 429, 500, 502, 503, 504, 529, a network
    /// error or a timeout. Anything else (400, 401, 403, 404, a malformed answer) would fail the
    /// same way again.
    pub fn retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => {
                matches!(status, 429 | 500 | 502 | 503 | 504 | 529)
            }
            LlmError::Timeout { .. } | LlmError::Network { .. } => true,
            _ => false,
        }
    }

    /// The provider is unavailable (rate-limited, overloaded or not answering): after the
    /// retries, a reason to ask the fallback.
    pub fn unavailable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => matches!(status, 429 | 503 | 529),
            LlmError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The server's wait hint, which beats the backoff.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
