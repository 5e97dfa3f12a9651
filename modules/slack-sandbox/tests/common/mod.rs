//! Test plumbing: a minimal HTTP/1.1 client over a plain TCP stream (one request per
//! connection), and the fixtures' shapes.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer: status, headers (lower-case names) and the body parsed as JSON (`Null` if not).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request to `{base}{path}` and reads the whole answer.
pub async fn request(
    base: &str,
    verb: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &str,
) -> Answer {
    let host = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host)
        .await
        .expect("connect to the sandbox");
    let mut head = format!("{verb} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header/body split");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// `POST {base}/api/{method}` with a form body.
pub async fn form(base: &str, method: &str, token: &str, pairs: &[(&str, &str)]) -> Answer {
    let body = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    request(
        base,
        "POST",
        &format!("/api/{method}"),
        Some(token),
        Some("application/x-www-form-urlencoded"),
        &body,
    )
    .await
}

/// `POST {base}/api/{method}` with a JSON body.
pub async fn json(base: &str, method: &str, token: &str, body: &Value) -> Answer {
    request(
        base,
        "POST",
        &format!("/api/{method}"),
        Some(token),
        Some("application/json; charset=utf-8"),
        &body.to_string(),
    )
    .await
}

/// `GET {base}/api/{method}?query`.
pub async fn get(base: &str, method: &str, token: Option<&str>, query: &str) -> Answer {
    request(
        base,
        "GET",
        &format!("/api/{method}?{query}"),
        token,
        None,
        "",
    )
    .await
}

fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A fixture from `shared/fixtures/slack`.
pub fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/slack")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// Every field of `expected` is in `actual` with the same JSON type, recursively (arrays: the
/// first element of each). Fields listed in `optional` may be missing (they are the fixture's
/// legacy or incidental fields); `null` in the fixture matches anything.
pub fn assert_same_shape(actual: &Value, expected: &Value, optional: &[&str], at: &str) {
    match (expected, actual) {
        (Value::Null, _) => {}
        (Value::Object(want), Value::Object(got)) => {
            for (key, want_value) in want {
                let here = format!("{at}.{key}");
                match got.get(key) {
                    Some(got_value) => assert_same_shape(got_value, want_value, optional, &here),
                    None => assert!(
                        optional.contains(&key.as_str()),
                        "{here} missing in {actual}"
                    ),
                }
            }
        }
        (Value::Array(want), Value::Array(got)) => {
            if let (Some(w), Some(g)) = (want.first(), got.first()) {
                assert_same_shape(g, w, optional, &format!("{at}[0]"));
            }
        }
        (want, got) => assert_eq!(
            std::mem::discriminant(want),
            std::mem::discriminant(got),
            "{at}: expected {want}, got {got}"
        ),
    }
}
