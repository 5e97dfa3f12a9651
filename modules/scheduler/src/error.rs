//! The error a unit run returns, and the one place where an HTTP answer becomes an error kind.

use std::fmt;
use std::time::Duration;

/// What went wrong, as far as retrying is concerned.
///
/// Modules map their own failures onto these kinds once, where the failure happens; the scheduler's
/// [`RetryPolicy`](crate::RetryPolicy) then decides what a kind means for the unit. Keeping the kinds
/// closed (instead of matching on error strings or types) is what lets one ordered classifier serve
/// every module.
///
/// Its names (`rate_limited`, ...) are what logs and metrics show: `Display`, `FromStr`,
/// `AsRef<str>` and `&'static str` are derived from the variant names in snake_case.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum ErrorKind {
    /// Connection refused or reset, DNS, TLS: the peer may be back soon.
    Network,
    /// The run, or a request inside it, took longer than allowed.
    Timeout,
    /// The server failed (5xx).
    Server,
    /// 429, or a 403 that carries a rate-limit wait hint.
    RateLimited,
    /// 401: the token is wrong, expired or revoked.
    BadCredentials,
    /// 403 without a rate-limit hint: the credentials lack a permission.
    Forbidden,
    /// 404 or 410.
    NotFound,
    /// The request or the input was rejected as invalid (400, 422, bad config in a repository).
    Validation,
    /// The unit panicked.
    Panicked,
    /// Anything else: a bug or a local failure (disk, database) that retrying will not fix.
    Internal,
}

impl ErrorKind {
    /// A short lowercase name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The failure of one unit run: a kind, a message for humans, and an optional wait hint from the
/// server (`Retry-After`, a rate-limit reset) that overrides the computed backoff.
///
/// The message must already be safe to log: no tokens, no secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitError {
    kind: ErrorKind,
    message: String,
    wait_hint: Option<Duration>,
}

impl UnitError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        UnitError {
            kind,
            message: message.into(),
            wait_hint: None,
        }
    }

    /// Sets how long the server asked us to wait before the next attempt.
    pub fn with_wait_hint(mut self, wait: Duration) -> Self {
        self.wait_hint = Some(wait);
        self
    }

    /// Classifies an HTTP answer. The order matters and is the whole rule:
    ///
    /// 1. 429 is a rate limit.
    /// 2. 403 with a wait hint (Retry-After, or remaining quota 0 with a reset) is a rate limit:
    ///    GitHub answers secondary limits this way.
    /// 3. 401 is bad credentials; any other 403 is a missing permission.
    /// 4. 404 and 410 are not found; 400 and 422 are validation errors.
    /// 5. 408 and every 5xx are server trouble; anything else is permanent.
    pub fn from_http_status(
        status: u16,
        wait_hint: Option<Duration>,
        message: impl Into<String>,
    ) -> Self {
        let kind = match (status, wait_hint) {
            (429, _) => ErrorKind::RateLimited,
            (403, Some(_)) => ErrorKind::RateLimited,
            (401, _) => ErrorKind::BadCredentials,
            (403, None) => ErrorKind::Forbidden,
            (404 | 410, _) => ErrorKind::NotFound,
            (400 | 422, _) => ErrorKind::Validation,
            (408, _) => ErrorKind::Timeout,
            (500..=599, _) => ErrorKind::Server,
            _ => ErrorKind::Internal,
        };
        UnitError {
            kind,
            message: message.into(),
            wait_hint,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn wait_hint(&self) -> Option<Duration> {
        self.wait_hint
    }
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}

impl std::error::Error for UnitError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_in_order() {
        let hint = Some(Duration::from_secs(60));
        let cases: &[(u16, Option<Duration>, ErrorKind)] = &[
            (429, None, ErrorKind::RateLimited),
            (429, hint, ErrorKind::RateLimited),
            (403, hint, ErrorKind::RateLimited),
            (403, None, ErrorKind::Forbidden),
            (401, None, ErrorKind::BadCredentials),
            (401, hint, ErrorKind::BadCredentials),
            (404, None, ErrorKind::NotFound),
            (410, None, ErrorKind::NotFound),
            (422, None, ErrorKind::Validation),
            (400, None, ErrorKind::Validation),
            (408, None, ErrorKind::Timeout),
            (500, None, ErrorKind::Server),
            (502, None, ErrorKind::Server),
            (503, hint, ErrorKind::Server),
            (418, None, ErrorKind::Internal),
        ];
        for &(status, hint, want) in cases {
            let got = UnitError::from_http_status(status, hint, "x").kind();
            assert_eq!(got, want, "status {status} with hint {hint:?}");
        }
    }

    #[test]
    fn display_names_the_kind() {
        let e = UnitError::new(ErrorKind::NotFound, "repository acme/shop not found");
        assert_eq!(e.to_string(), "repository acme/shop not found (not_found)");
    }

    /// The names logs and metrics have always shown, in every direction.
    #[test]
    fn kinds_keep_their_names_and_parse_back() {
        use std::str::FromStr;
        let names = [
            (ErrorKind::Network, "network"),
            (ErrorKind::Timeout, "timeout"),
            (ErrorKind::Server, "server"),
            (ErrorKind::RateLimited, "rate_limited"),
            (ErrorKind::BadCredentials, "bad_credentials"),
            (ErrorKind::Forbidden, "forbidden"),
            (ErrorKind::NotFound, "not_found"),
            (ErrorKind::Validation, "validation"),
            (ErrorKind::Panicked, "panicked"),
            (ErrorKind::Internal, "internal"),
        ];
        for (kind, name) in names {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
            assert_eq!(kind.as_ref(), name);
            assert_eq!(ErrorKind::from_str(name), Ok(kind));
        }
        assert!(ErrorKind::from_str("RateLimited").is_err());
        let phases = [
            (crate::Phase::Preflight, "preflight"),
            (crate::Phase::Worker, "worker"),
        ];
        for (phase, name) in phases {
            assert_eq!(phase.as_str(), name);
            assert_eq!(phase.to_string(), name);
            assert_eq!(crate::Phase::from_str(name), Ok(phase));
        }
    }
}
