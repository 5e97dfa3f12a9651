//! The container health probe: `GET {path}` with the preview's `Host`, on each address the
//! preview can be reached at, until one answers 2xx or the startup timeout passes.
//!
//! Over hyper-util's legacy client with HTTP/1 only (already in the tree through bollard and
//! octocrab): a maintained parser of status lines, chunked and early-closed answers instead of a
//! hand-written request. No connection is kept between attempts (no idle pool), so a container
//! that restarts is probed afresh, and nothing of a removed preview stays open.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one attempt on one address may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait between rounds of attempts.
const INTERVAL: Duration = Duration::from_millis(250);

/// The preview never answered 2xx in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "GET {path} on the preview did not answer 2xx within {}s ({}); check that the service listens on its internal port and that the health check path answers 2xx",
    within.as_secs(),
    seen.join("; ")
)]
pub struct Unhealthy {
    pub path: String,
    pub within: Duration,
    /// Per address, what its last attempt saw.
    pub seen: Vec<String>,
}

/// Probes `http://{addr}{path}` (with `Host: {host}`) on each of `addrs` until one answers 2xx or
/// `within` passes; the error says what the last attempt on each address saw.
pub async fn wait_healthy(
    addrs: &[SocketAddr],
    host: &str,
    path: &str,
    within: Duration,
) -> Result<(), Unhealthy> {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let deadline = tokio::time::Instant::now() + within;
    let mut last = vec![String::from("not tried"); addrs.len()];
    loop {
        for (addr, seen) in addrs.iter().zip(last.iter_mut()) {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, probe(&client, *addr, host, path)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => return Ok(()),
                Ok(Ok(status)) => *seen = format!("answered {status}"),
                Ok(Err(e)) => *seen = e,
                Err(_) => *seen = format!("did not answer within {}s", ATTEMPT_TIMEOUT.as_secs()),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Unhealthy {
                path: path.to_owned(),
                within,
                seen: addrs
                    .iter()
                    .zip(&last)
                    .map(|(a, s)| format!("{a}: {s}"))
                    .collect(),
            });
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// One `GET`; its status code, or what went wrong (for the error's list).
async fn probe(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<u16, String> {
    let request = http::Request::get(format!("http://{addr}{path}"))
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "productbuilder")
        .body(Empty::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = client.request(request).await.map_err(|e| {
        if e.is_connect() {
            format!("cannot connect: {}", source_of(&e))
        } else {
            format!("no HTTP answer: {}", source_of(&e))
        }
    })?;
    Ok(response.status().as_u16())
}

/// The innermost cause: hyper-util's own message says only "client error (Connect)".
fn source_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers each connection with `answers` in turn, and records the requests.
    async fn server(
        answers: Vec<&'static str>,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for answer in answers.into_iter().cycle() {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn healthy_once_an_address_answers_2xx_with_the_preview_s_host() {
        let (addr, mut requests) = server(vec![
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        wait_healthy(
            &[addr],
            "shop-pr-1.example.com",
            "/healthz",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let first = requests.recv().await.unwrap();
        assert!(first.starts_with("GET /healthz HTTP/1.1\r\n"), "{first}");
        assert!(
            first
                .to_ascii_lowercase()
                .contains("host: shop-pr-1.example.com\r\n"),
            "{first}"
        );
    }

    #[tokio::test]
    async fn the_error_says_what_each_address_saw() {
        let (answering, _requests) = server(vec![
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        // A port nothing listens on: bound, then released.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = wait_healthy(&[answering, closed], "h", "/", Duration::ZERO)
            .await
            .unwrap_err();
        assert_eq!(e.seen.len(), 2);
        assert_eq!(e.seen[0], format!("{answering}: answered 500"));
        assert!(
            e.seen[1].starts_with(&format!("{closed}: cannot connect")),
            "{:?}",
            e.seen
        );
        assert!(
            e.to_string()
                .starts_with("GET / on the preview did not answer 2xx within 0s"),
            "{e}"
        );
    }
}
