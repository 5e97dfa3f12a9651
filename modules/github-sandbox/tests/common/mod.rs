//! A minimal HTTP/1.1 client over `tokio::net::TcpStream`, for header-level checks (one
//! connection per request, `Connection: close`), plus small helpers shared by the tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use productbuilder_github_sandbox::{Permission, Sandbox};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The repository most tests work in.
pub const REPO: &str = "acme/shop";

/// A sandbox with `acme/shop` and a bot token (`bot-token`, user `preview-bot`) with push
/// access to it.
pub async fn sandbox_with_bot() -> Sandbox {
    let sb = Sandbox::start().await.expect("start sandbox");
    sb.create_repo("acme", "shop");
    sb.add_token("bot-token", "preview-bot");
    sb.grant("bot-token", REPO, Permission::Push);
    sb
}

/// A raw HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// A header's value (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A header parsed as a number.
    pub fn num(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number"))
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The URL of a `Link` relation, if present.
    pub fn link(&self, rel: &str) -> Option<String> {
        let link = self.header("link")?;
        link.split(", ").find_map(|part| {
            let (url, r) = part.split_once("; ")?;
            (r == format!("rel=\"{rel}\"")).then(|| {
                url.trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
        })
    }
}

/// Sends one request. `target` is a path (`/repos/...`) or an absolute URL on `base`.
pub async fn send(
    base: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let host = base.trim_start_matches("http://");
    let path = target.strip_prefix(base).unwrap_or(target);
    let mut stream = TcpStream::connect(host).await.expect("connect to sandbox");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: sandbox-tests\r\nAccept: application/vnd.github+json\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    if let Some(body) = body {
        request.push_str(body);
    }
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// `GET` with a bearer token.
pub async fn get(base: &str, token: &str, target: &str) -> Resp {
    let auth = format!("Bearer {token}");
    send(base, "GET", target, &[("Authorization", &auth)], None).await
}

/// `GET` with a bearer token and `If-None-Match`.
pub async fn get_if(base: &str, token: &str, target: &str, etag: &str) -> Resp {
    let auth = format!("Bearer {token}");
    send(
        base,
        "GET",
        target,
        &[("Authorization", &auth), ("If-None-Match", etag)],
        None,
    )
    .await
}

/// A request with a JSON body and a bearer token.
pub async fn call(base: &str, token: &str, method: &str, target: &str, body: &str) -> Resp {
    let auth = format!("token {token}");
    send(
        base,
        method,
        target,
        &[("Authorization", &auth)],
        Some(body),
    )
    .await
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An app JWT with a dummy signature (for apps registered without a key).
pub fn unsigned_jwt(app_id: u64, iat: i64, exp: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"iat":{iat},"exp":{exp},"iss":{app_id}}}"#));
    format!("{header}.{payload}.c2lnbmF0dXJl")
}
