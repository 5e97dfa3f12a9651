//! One HTTP POST with a bounded answer: hyper-util's client with rustls (ring), as the builds'
//! callback and the previews' probe. Timeouts are the caller's (the whole exchange, answer body
//! included, runs under its deadline); redirects are not followed (hyper follows none), so the
//! key header never travels to another host.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The largest answer read: far above any real completion, small enough that a hostile
/// endpoint cannot exhaust memory.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// What came back.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub enum TransportError {
    /// Not sent, or the answer broke off; the text names the cause, never a header.
    Network(String),
    /// The answer was longer than the limit.
    TooLarge,
}

#[derive(Clone)]
pub struct Transport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    max_body: usize,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("max_body", &self.max_body)
            .finish()
    }
}

impl Transport {
    pub fn new(max_body: usize) -> std::io::Result<Transport> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Transport { client, max_body })
    }

    /// POSTs `body` (JSON) to `url` with `headers`.
    pub async fn post(
        &self,
        url: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Answer, TransportError> {
        let uri: http::Uri = url.parse().map_err(|_| {
            TransportError::Network("the base_url does not make a valid URL".into())
        })?;
        let mut request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "productbuilder");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| TransportError::Network(format!("the request could not be built: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| TransportError::Network(chain(&e)))?;
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        if let Some(length) = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && length > self.max_body as u64
        {
            return Err(TransportError::TooLarge);
        }
        let body = Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    TransportError::TooLarge
                } else {
                    TransportError::Network(format!("the answer broke off: {e}"))
                }
            })?
            .to_bytes();
        Ok(Answer {
            status,
            headers: parts.headers,
            body,
        })
    }
}

/// An error and its causes, on one line ("client error (Connect): tcp connect error: …").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
