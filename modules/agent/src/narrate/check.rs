//! The check of a ready preview: does its URL answer (status and latency), and what do the first
//! lines of its logs say. What it sees is reported, never an error of the pass: a preview that
//! refuses connections is exactly what the thread should hear about.
//!
//! The GET goes over hyper-util's client (http and https, HTTP/1, no redirects followed, no
//! pooled connection kept), with a short deadline; the logs are read through
//! [`Previews::logs`], bounded in bytes and time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use productbuilder_preview::Previews;

/// How long the GET of a preview may take, connection included.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long reading a preview's logs may take.
pub const LOGS_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes of logs read.
pub const MAX_LOG_BYTES: usize = 16 * 1024;
/// The lines of logs kept.
pub const LOG_LINES: usize = 5;
/// The end of the logs asked of the engine; the first lines of it are kept (a preview that just
/// became ready has fewer).
const LOGS_TAIL: usize = 200;

/// What the GET saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Answered {
        status: u16,
        millis: u64,
    },
    /// No answer: refused, timed out, not a URL (what happened, in words).
    Unreachable(String),
}

/// What the logs said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logs {
    /// Up to [`LOG_LINES`] non-empty lines, as read (hostile text: escape before showing).
    Lines(Vec<String>),
    Unavailable(String),
}

/// What the check of one preview saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub health: Health,
    pub logs: Logs,
}

/// Checks previews. Cheap to clone.
#[derive(Clone)]
pub struct Checker {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// `None`: previews are not run here; their logs cannot be read.
    previews: Option<Previews>,
}

impl Checker {
    /// Fails only when the system's root certificates cannot be loaded.
    pub fn new(previews: Option<Previews>) -> std::io::Result<Checker> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            // A fresh connection each time: nothing of a removed preview stays open.
            .pool_max_idle_per_host(0)
            .build(https);
        Ok(Checker { client, previews })
    }

    /// The GET of `url` and the first lines of `repo#pr`'s logs, at once.
    pub async fn check(&self, repo: &str, pr: u64, url: &str) -> Seen {
        let (health, logs) = tokio::join!(self.health(url), self.logs(repo, pr));
        Seen { health, logs }
    }

    async fn health(&self, url: &str) -> Health {
        let uri: http::Uri = match url.parse() {
            Ok(uri) => uri,
            Err(_) => return Health::Unreachable(format!("{url:?} is not a URL")),
        };
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Health::Unreachable(format!("{url:?} is not an http(s) URL"));
        }
        let (uri, host) = loopback_for_localhost(uri);
        let mut request =
            http::Request::get(uri).header(http::header::USER_AGENT, "productbuilder");
        if let Some(host) = host {
            request = request.header(http::header::HOST, host);
        }
        let request = match request.body(Empty::<Bytes>::new()) {
            Ok(r) => r,
            Err(e) => return Health::Unreachable(format!("the request: {e}")),
        };
        let started = Instant::now();
        match tokio::time::timeout(HEALTH_TIMEOUT, self.client.request(request)).await {
            Ok(Ok(response)) => Health::Answered {
                status: response.status().as_u16(),
                millis: started.elapsed().as_millis() as u64,
            },
            Ok(Err(e)) => Health::Unreachable(error_chain(&e)),
            Err(_) => {
                Health::Unreachable(format!("no answer within {}s", HEALTH_TIMEOUT.as_secs()))
            }
        }
    }

    async fn logs(&self, repo: &str, pr: u64) -> Logs {
        let Some(previews) = &self.previews else {
            return Logs::Unavailable("previews are not run by this daemon".into());
        };
        let read = async {
            let mut stream = previews
                .logs(repo, pr, LOGS_TAIL, false)
                .await
                .map_err(|e| e.to_string())?;
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
                if bytes.len() >= MAX_LOG_BYTES || complete_lines(&bytes) > LOG_LINES {
                    break;
                }
            }
            bytes.truncate(MAX_LOG_BYTES);
            Ok::<_, String>(bytes)
        };
        match tokio::time::timeout(LOGS_TIMEOUT, read).await {
            Ok(Ok(bytes)) => Logs::Lines(first_lines(&String::from_utf8_lossy(&bytes))),
            Ok(Err(e)) => Logs::Unavailable(e),
            Err(_) => Logs::Unavailable(format!("not read within {}s", LOGS_TIMEOUT.as_secs())),
        }
    }
}

fn complete_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == b'\n').count()
}

/// The first [`LOG_LINES`] non-empty lines.
fn first_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .take(LOG_LINES)
        .map(str::to_owned)
        .collect()
}

/// `*.localhost` names are loopback (RFC 6761), as browsers and curl resolve them, but the
/// system resolver may not know them: an `http` URL on such a name is asked of 127.0.0.1 at its
/// port, with the name as its `Host` (what a router such as Traefik routes by). Any other URL is
/// left as it is, with no `Host` of ours.
fn loopback_for_localhost(uri: http::Uri) -> (http::Uri, Option<String>) {
    let Some(authority) = uri.authority().cloned() else {
        return (uri, None);
    };
    let host = authority.host().to_ascii_lowercase();
    let local = host == "localhost" || host.ends_with(".localhost");
    if !local || uri.scheme_str() != Some("http") {
        return (uri, None);
    }
    let port = authority.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    match format!("http://127.0.0.1:{port}{path}").parse() {
        Ok(loopback) => (loopback, Some(authority.as_str().to_owned())),
        Err(_) => (uri, None),
    }
}

/// An error with its causes ("client error (Connect): tcp connect error: Connection refused"),
/// which is where hyper says what actually happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_localhost_name_is_asked_of_loopback_with_its_host() {
        let (uri, host) = loopback_for_localhost(
            "http://shop-pr-3.preview.localhost:8092/a?b=1"
                .parse()
                .unwrap(),
        );
        assert_eq!(uri.to_string(), "http://127.0.0.1:8092/a?b=1");
        assert_eq!(host.as_deref(), Some("shop-pr-3.preview.localhost:8092"));
        let (uri, host) = loopback_for_localhost("http://x.localhost".parse().unwrap());
        assert_eq!(uri.to_string(), "http://127.0.0.1:80/");
        assert_eq!(host.as_deref(), Some("x.localhost"));
        for other in [
            "http://example.com/",
            "https://x.localhost/",
            "http://localhostx.com/",
        ] {
            let (uri, host) = loopback_for_localhost(other.parse().unwrap());
            assert_eq!((uri.to_string(), host), (other.to_owned(), None));
        }
    }

    #[test]
    fn the_first_non_empty_lines() {
        assert_eq!(
            first_lines("\n a\r\n\nb\nc\nd\ne\nf\n"),
            [" a", "b", "c", "d", "e"]
        );
        assert!(first_lines("").is_empty());
    }
}
