//! The callback: `POST callback_url` with the [`BuildResult`] plus `id`, `repo` and `status` as
//! JSON, signed `X-Productbuilder-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>` with
//! `[builds] callback_secret`, and `Idempotency-Key: productbuilder-build-{id}` (the runner
//! records the Callback step before sending, so a crash sends again: at least once, and the key
//! lets the receiver drop the second).
//!
//! The URL is hostile (anyone with the API token chose it): http or https only, no user info
//! (checked again here, not only in the spec), and no redirect is followed (hyper follows none), so
//! the body never goes to an origin it was not addressed to. Each attempt has a deadline; attempts
//! are retried with doubling backoff while the answer may change (connection errors, 408, 429,
//! 5xx), at most [`CallbackPolicy::attempts`] times. A 3xx or another 4xx ends it at once.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use productbuilder_settings::Secret;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::records::BuildId;
use crate::spec::BuildResult;
use crate::status::Status;

pub const SIGNATURE_HEADER: &str = "x-productbuilder-signature-256";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// How hard a callback is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallbackPolicy {
    pub attempts: u32,
    /// The wait after the first failed attempt, doubled after each, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// One attempt (connect, send, answer) may take this long.
    pub attempt_timeout: Duration,
}

impl Default for CallbackPolicy {
    fn default() -> Self {
        CallbackPolicy {
            attempts: 6,
            first_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a callback was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("callback_url is refused: {0}")]
    Url(&'static str),
    #[error("the callback was not delivered after {attempts} attempts; the last: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("the callback was not delivered: the receiver answered {status}, which is not retried")]
    Refused { status: u16 },
    #[error("the callback was cancelled (the daemon is stopping)")]
    Cancelled,
}

/// A delivered callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub attempts: u32,
    pub status: u16,
}

/// The body: the result's fields with `id`, `repo` and `status`.
pub fn payload(id: BuildId, repo: &str, status: Status, result: &BuildResult) -> Vec<u8> {
    let mut value = serde_json::to_value(result).expect("a BuildResult always serialises");
    if let Some(map) = value.as_object_mut() {
        map.insert("id".into(), id.0.into());
        map.insert("repo".into(), repo.into());
        map.insert("status".into(), status.as_str().into());
    }
    serde_json::to_vec(&value).expect("JSON values serialise")
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends callbacks. Cheap to clone.
#[derive(Clone)]
pub struct Callbacks {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    secret: Option<Secret>,
    policy: CallbackPolicy,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks")
            .field("signed", &self.secret.is_some())
            .field("policy", &self.policy)
            .finish()
    }
}

impl Callbacks {
    pub fn new(secret: Option<Secret>, policy: CallbackPolicy) -> std::io::Result<Callbacks> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https);
        Ok(Callbacks {
            client,
            secret,
            policy,
        })
    }

    /// POSTs `body` to `url` until it is answered 2xx, the attempts are spent, or `cancel`.
    pub async fn send(
        &self,
        url: &str,
        id: BuildId,
        body: Vec<u8>,
        cancel: &CancellationToken,
    ) -> Result<Delivered, CallbackError> {
        let uri: http::Uri = url.parse().map_err(|_| CallbackError::Url("not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(CallbackError::Url("only http and https are called back"));
        }
        match uri.authority() {
            None => return Err(CallbackError::Url("it has no host")),
            Some(a) if a.as_str().contains('@') => {
                return Err(CallbackError::Url("user info is not allowed"));
            }
            Some(_) => {}
        }
        let body = Bytes::from(body);
        let signature = self.secret.as_ref().map(|s| signature(s.expose(), &body));
        let mut backoff = self.policy.first_backoff;
        let mut last = String::from("not tried");
        let attempts = self.policy.attempts.max(1);
        for attempt in 1..=attempts {
            let mut request = http::Request::post(uri.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::USER_AGENT, "productbuilder")
                .header(IDEMPOTENCY_HEADER, format!("productbuilder-build-{id}"));
            if let Some(signature) = &signature {
                request = request.header(SIGNATURE_HEADER, signature);
            }
            let request = request
                .body(Full::new(body.clone()))
                .expect("a valid request");
            let answer = tokio::select! {
                _ = cancel.cancelled() => return Err(CallbackError::Cancelled),
                a = tokio::time::timeout(self.policy.attempt_timeout, self.attempt(request)) => a,
            };
            match answer {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    return Ok(Delivered {
                        attempts: attempt,
                        status,
                    });
                }
                Ok(Ok(status)) if status == 408 || status == 429 || status >= 500 => {
                    last = format!("answered {status}");
                }
                Ok(Ok(status)) => return Err(CallbackError::Refused { status }),
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = format!(
                        "no answer within {}s",
                        self.policy.attempt_timeout.as_secs_f64()
                    )
                }
            }
            if attempt < attempts {
                tokio::select! {
                    _ = cancel.cancelled() => return Err(CallbackError::Cancelled),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(self.policy.max_backoff);
            }
        }
        Err(CallbackError::GaveUp { attempts, last })
    }

    /// One request; its status (the body is read and dropped, bounded by the deadline).
    async fn attempt(&self, request: http::Request<Full<Bytes>>) -> Result<u16, String> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("could not be sent: {e}"))?;
        let status = response.status().as_u16();
        // Read (and drop) a little of the answer so that the connection ends cleanly.
        let mut body = response.into_body();
        let mut read = 0usize;
        while read < 64 * 1024 {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_github_s_form() {
        // The example of GitHub's webhook documentation.
        assert_eq!(
            signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn the_payload_is_the_result_with_id_repo_and_status() {
        let result = BuildResult {
            success: true,
            pr_number: Some(3),
            ..BuildResult::default()
        };
        let body = payload(BuildId(9), "acme/web", Status::Completed, &result);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], 9);
        assert_eq!(v["repo"], "acme/web");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["success"], true);
        assert_eq!(v["pr_number"], 3);
    }
}
