//! HTTP plumbing shared by every route: GitHub-shaped errors, replies, query parsing,
//! pagination (`Link`), ETags, rate-limit headers, and the `gate` middleware that applies
//! faults, authentication, the primary rate limit, conditional requests and the request log.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LINK, LOCATION, RETRY_AFTER,
    VARY,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, response::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Shared;
use crate::world::{Bucket, Caller, Fault, Identity, RequestRecord, World};

/// Where GitHub's error bodies point.
pub(crate) const DOCS: &str = "https://docs.github.com/rest";
const RATE_LIMIT_DOCS: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";
const SECONDARY_DOCS: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits";
const JSON_TYPE: &str = "application/json; charset=utf-8";

// ---------------------------------------------------------------------------------------------
// Errors and replies

/// An error answered with GitHub's error JSON: `{"message", "documentation_url", "status"}`
/// plus `errors` for validation failures.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    errors: Option<Value>,
    documentation_url: &'static str,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            errors: None,
            documentation_url: DOCS,
        }
    }

    pub(crate) fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Not Found")
    }

    pub(crate) fn bad_credentials() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Bad credentials")
    }

    pub(crate) fn unauthorized(message: String) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub(crate) fn forbidden(message: &str) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub(crate) fn problems_parsing_json() -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "Problems parsing JSON")
    }

    pub(crate) fn unprocessable(message: String) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub(crate) fn conflict(message: String) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// `422 Validation Failed` with one custom field error.
    pub(crate) fn validation(resource: &str, field: &str, message: &str) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed").with_errors(json!([{
            "resource": resource,
            "field": field,
            "code": "custom",
            "message": message,
        }]))
    }

    /// `422 Validation Failed` with one custom error not tied to a field (GitHub's answer to a
    /// duplicate pull request).
    pub(crate) fn validation_custom(resource: &str, message: &str) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed").with_errors(json!([{
            "resource": resource,
            "code": "custom",
            "message": message,
        }]))
    }

    /// `422 Validation Failed` for an invalid (or missing) field.
    pub(crate) fn invalid(resource: &str, field: &str, code: &str) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed").with_errors(json!([{
            "resource": resource,
            "field": field,
            "code": code,
        }]))
    }

    pub(crate) fn with_errors(mut self, errors: Value) -> ApiError {
        self.errors = Some(errors);
        self
    }

    fn with_docs(mut self, url: &'static str) -> ApiError {
        self.documentation_url = url;
        self
    }
}

fn error_body(status: StatusCode, message: &str, errors: Option<&Value>, docs: &str) -> Value {
    let mut body = json!({
        "message": message,
        "documentation_url": docs,
        "status": status.as_u16().to_string(),
    });
    if let (Some(errors), Some(map)) = (errors, body.as_object_mut()) {
        map.insert("errors".to_string(), errors.clone());
    }
    body
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = error_body(
            self.status,
            &self.message,
            self.errors.as_ref(),
            self.documentation_url,
        );
        json_response(self.status, &body)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
    response
}

/// A successful answer: a status, optional JSON and extra headers.
#[derive(Debug)]
pub(crate) struct Reply {
    status: StatusCode,
    body: Option<Value>,
    headers: HeaderMap,
}

impl Reply {
    pub(crate) fn ok(body: Value) -> Reply {
        Reply::with_status(StatusCode::OK, Some(body))
    }

    pub(crate) fn created(body: Value) -> Reply {
        Reply::with_status(StatusCode::CREATED, Some(body))
    }

    pub(crate) fn no_content() -> Reply {
        Reply::with_status(StatusCode::NO_CONTENT, None)
    }

    pub(crate) fn redirect(location: &str) -> Reply {
        Reply::with_status(StatusCode::FOUND, None).header(LOCATION, location)
    }

    fn with_status(status: StatusCode, body: Option<Value>) -> Reply {
        Reply {
            status,
            body,
            headers: HeaderMap::new(),
        }
    }

    /// Adds a header; values that are not valid header text are dropped.
    pub(crate) fn header(mut self, name: HeaderName, value: &str) -> Reply {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(name, value);
        }
        self
    }

    /// Adds a `Link` header when there is one.
    pub(crate) fn link(self, link: Option<String>) -> Reply {
        match link {
            Some(link) => self.header(LINK, &link),
            None => self,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = match &self.body {
            Some(body) => json_response(self.status, body),
            None => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = self.status;
                r
            }
        };
        response.headers_mut().extend(self.headers);
        response
    }
}

// ---------------------------------------------------------------------------------------------
// Query strings and pagination

/// A parsed query string that keeps the raw pairs for rebuilding `Link` URLs.
#[derive(Debug, Default)]
pub(crate) struct Query {
    raw_pairs: Vec<String>,
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        let raw_pairs: Vec<String> = raw
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        let pairs = raw_pairs
            .iter()
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Query { raw_pairs, pairs }
    }

    /// The last value given for `name` (empty values count as absent).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// `name` if it is one of `allowed`, `default` when absent, else a 422.
    pub(crate) fn choice<'a>(
        &'a self,
        name: &str,
        allowed: &[&str],
        default: &'a str,
    ) -> Result<&'a str, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) if allowed.contains(&v) => Ok(v),
            Some(_) => Err(ApiError::invalid("Query", name, "invalid")),
        }
    }

    /// `since` as a timestamp (ISO 8601, e.g. `2024-01-02T03:04:05Z`), 422 when malformed.
    pub(crate) fn since(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        let Some(raw) = self.get("since") else {
            return Ok(None);
        };
        chrono::DateTime::parse_from_rfc3339(raw)
            .map(|t| Some(t.with_timezone(&chrono::Utc)))
            .map_err(|_| ApiError::invalid("Query", "since", "invalid"))
    }

    /// The query without `page`, as raw pairs.
    fn without_page(&self) -> Vec<&str> {
        self.raw_pairs
            .iter()
            .filter(|p| p.split_once('=').map_or(p.as_str(), |(k, _)| k) != "page")
            .map(String::as_str)
            .collect()
    }
}

/// Decodes `%XX` escapes and `+` (a space in query strings); invalid escapes stay literal.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (
                bytes.get(i + 1).and_then(hex_digit),
                bytes.get(i + 2).and_then(hex_digit),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: &u8) -> Option<u8> {
    char::from(*b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// `per_page` (default 30, at most 100) and `page` (from 1), leniently parsed like GitHub.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    pub per_page: usize,
    pub page: usize,
}

impl Page {
    pub(crate) fn from_query(q: &Query) -> Page {
        let per_page = q
            .get("per_page")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .map_or(30, |n| n.min(100));
        let page = q
            .get("page")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1);
        Page { per_page, page }
    }
}

/// Cuts one page out of `items` and builds GitHub's `Link` header (absolute URLs on the
/// sandbox's host; absent when everything fits on the first page).
pub(crate) fn paginate<T>(
    items: Vec<T>,
    q: &Query,
    base_url: &str,
    path: &str,
) -> (Vec<T>, Option<String>) {
    let Page { per_page, page } = Page::from_query(q);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let start = (page - 1).saturating_mul(per_page);
    let slice: Vec<T> = items.into_iter().skip(start).take(per_page).collect();
    let rest = q.without_page();
    let url = |n: usize| {
        let mut query = rest.clone();
        let page_pair = format!("page={n}");
        query.push(&page_pair);
        format!("<{base_url}{path}?{}>", query.join("&"))
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", url((page - 1).min(last))));
    }
    if page < last {
        links.push(format!("{}; rel=\"next\"", url(page + 1)));
        links.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", url(1)));
    }
    let link = (!links.is_empty()).then(|| links.join(", "));
    (slice, link)
}

// ---------------------------------------------------------------------------------------------
// Credentials, ETags, rate-limit headers

/// The credential in `Authorization: Bearer X` or `token X`. Other schemes are returned whole,
/// so they fail as unknown credentials (`401 Bad credentials`).
pub(crate) fn credential(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(axum::http::header::AUTHORIZATION)?;
    let Ok(raw) = raw.to_str() else {
        return Some(String::from_utf8_lossy(raw.as_bytes()).into_owned());
    };
    let raw = raw.trim();
    match raw.split_once(' ') {
        Some((scheme, value))
            if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") =>
        {
            Some(value.trim().to_string())
        }
        _ => Some(raw.to_string()),
    }
}

/// A weak ETag over the identity key and the body bytes.
///
/// GitHub's ETags are tied to the credentials; here they are tied to the *identity* (a user, an
/// installation), so two tokens of the same identity (e.g. an installation token before and
/// after rotation) see the same ETag for the same body and keep getting 304s.
pub(crate) fn etag(identity_key: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(identity_key.as_bytes());
    h.update([0u8]);
    h.update(body);
    format!("W/\"{}\"", hex::encode(h.finalize().as_slice()))
}

/// Whether an `If-None-Match` value (a list of tags, or `*`) matches `tag`, weakly.
pub(crate) fn etag_matches(if_none_match: &str, tag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let tag = opaque(tag);
    if_none_match
        .split(',')
        .any(|candidate| candidate.trim() == "*" || opaque(candidate) == tag)
}

fn set_rate_headers(headers: &mut HeaderMap, bucket: Bucket, exhausted: bool) {
    let (remaining, used) = if exhausted {
        (0, bucket.limit)
    } else {
        (bucket.remaining(), bucket.used)
    };
    let pairs = [
        ("x-ratelimit-limit", bucket.limit.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset", bucket.reset.to_string()),
        ("x-ratelimit-used", used.to_string()),
        ("x-ratelimit-resource", "core".to_string()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

fn set_common_headers(headers: &mut HeaderMap, request_id: u64) {
    headers.insert(
        HeaderName::from_static("x-github-media-type"),
        HeaderValue::from_static("github.v3; format=json"),
    );
    headers.insert(
        HeaderName::from_static("x-github-api-version-selected"),
        HeaderValue::from_static("2022-11-28"),
    );
    if let Ok(id) = HeaderValue::from_str(&format!("SANDBOX:{request_id:08X}")) {
        headers.insert(HeaderName::from_static("x-github-request-id"), id);
    }
}

/// GitHub's primary-limit message for an identity.
fn rate_limit_message(world: &World, who: &Identity) -> String {
    let whom = match who {
        Identity::User(login) => format!("user ID {}", world.user(login).id),
        Identity::Installation(id) => format!("installation ID {id}"),
        Identity::App(id) => format!("app ID {id}"),
        Identity::Anonymous => "127.0.0.1".to_string(),
    };
    format!(
        "API rate limit exceeded for {whom}. If you reach out to GitHub Support for help, please include the request ID."
    )
}

// ---------------------------------------------------------------------------------------------
// The gate middleware

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the request log needs to know about a request before it is answered.
struct Seen {
    method: Method,
    path_and_query: String,
    token: Option<String>,
    if_none_match: Option<String>,
    at: Instant,
    request_id: u64,
}

impl Seen {
    fn record(
        self,
        shared: &Shared,
        identity: Option<&Identity>,
        status: StatusCode,
        counted: bool,
    ) {
        let record = RequestRecord {
            method: self.method,
            path_and_query: self.path_and_query,
            token: self.token,
            identity: identity.map(Identity::key),
            if_none_match: self.if_none_match.is_some(),
            status: status.as_u16(),
            counted,
            at: self.at,
        };
        shared.world().requests.push(record);
    }
}

/// Every request passes here, in this order: in-flight tracking, faults, (API paths only)
/// authentication, the primary rate limit (one unit reserved up front, refunded for 304s and
/// `/rate_limit`), the route, then error normalisation, ETag / `If-None-Match`, rate-limit and
/// GitHub headers, and the request log.
pub(crate) async fn gate(
    State(shared): State<Arc<Shared>>,
    mut req: Request,
    next: Next,
) -> Response {
    let _in_flight = InFlight::enter(&shared);
    let seen = Seen {
        method: req.method().clone(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string()),
        token: credential(req.headers()),
        if_none_match: req
            .headers()
            .get(IF_NONE_MATCH)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        at: Instant::now(),
        request_id: shared.request_seq.fetch_add(1, Ordering::SeqCst) + 1,
    };
    let path = req.uri().path().to_string();

    // 1. Faults.
    let fault = shared
        .world()
        .take_fault(&seen.method, &seen.path_and_query);
    if let Some(fault) = fault {
        if let Some(delay) = fault.delay {
            tokio::time::sleep(delay).await;
        }
        if fault.status != 0 {
            let (response, identity) =
                fault_response(&shared, &fault, seen.token.as_deref(), seen.request_id);
            seen.record(&shared, identity.as_ref(), response.status(), false);
            return response;
        }
    }

    // 2. The archive host (like codeload.github.com): no auth, no rate limit. Git's smart HTTP
    //    (`/git/...`) authenticates on its own (Basic auth) and is logged in `git_requests` too.
    if path.starts_with("/_sandbox/") || path.starts_with("/git/") {
        let response = next.run(req).await;
        seen.record(&shared, None, response.status(), false);
        return response;
    }

    // 3. Authentication.
    let auth = shared.world().authenticate(seen.token.as_deref());
    let identity = match auth {
        Ok(identity) => identity,
        Err(error) => {
            let mut response = error.into_response();
            let bucket = *shared.world().bucket(&Identity::Anonymous);
            set_rate_headers(response.headers_mut(), bucket, false);
            set_common_headers(response.headers_mut(), seen.request_id);
            seen.record(&shared, None, response.status(), false);
            return response;
        }
    };

    // 4. The primary rate limit: reserve one unit now so concurrent requests cannot overdraw.
    let exempt = path == "/rate_limit";
    let exhausted = {
        let mut world = shared.world();
        let bucket = world.bucket(&identity);
        if bucket.remaining() == 0 && !exempt {
            let bucket = *bucket;
            Some((bucket, rate_limit_message(&world, &identity)))
        } else {
            if !exempt {
                bucket.used += 1;
            }
            None
        }
    };
    if let Some((bucket, message)) = exhausted {
        let mut response = ApiError::new(StatusCode::FORBIDDEN, message)
            .with_docs(RATE_LIMIT_DOCS)
            .into_response();
        set_rate_headers(response.headers_mut(), bucket, false);
        set_common_headers(response.headers_mut(), seen.request_id);
        seen.record(&shared, Some(&identity), response.status(), false);
        return response;
    }

    // 5. The route.
    req.extensions_mut().insert(Caller {
        identity: identity.clone(),
    });
    let response = next.run(req).await;

    // 6. Finish: buffer, normalise errors, conditional requests, headers, log.
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let bytes = normalise_error(&mut parts, bytes);
    let mut counted = !exempt;
    let mut not_modified = false;
    if seen.method == Method::GET && parts.status == StatusCode::OK && is_json(&parts.headers) {
        let tag = etag(&identity.key(), &bytes);
        not_modified = seen
            .if_none_match
            .as_deref()
            .is_some_and(|inm| etag_matches(inm, &tag));
        if let Ok(value) = HeaderValue::from_str(&tag) {
            parts.headers.insert(ETAG, value);
        }
        parts.headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=60, s-maxage=60"),
        );
        parts.headers.insert(
            VARY,
            HeaderValue::from_static("Accept, Authorization, Cookie, X-GitHub-OTP"),
        );
    }
    {
        let mut world = shared.world();
        let bucket = world.bucket(&identity);
        if not_modified && counted {
            // "Making a conditional request does not count against your primary rate limit if
            // a 304 response is returned."
            bucket.used = bucket.used.saturating_sub(1);
            counted = false;
        }
        let bucket = *bucket;
        set_rate_headers(&mut parts.headers, bucket, false);
    }
    set_common_headers(&mut parts.headers, seen.request_id);
    parts.headers.remove(CONTENT_LENGTH);
    let response = if not_modified {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(CONTENT_TYPE);
        Response::from_parts(parts, Body::empty())
    } else {
        Response::from_parts(parts, Body::from(bytes))
    };
    seen.record(&shared, Some(&identity), response.status(), counted);
    response
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Turns non-JSON error bodies (axum's own rejections: bad paths, wrong methods, oversized
/// bodies) into GitHub's error JSON.
fn normalise_error(parts: &mut Parts, bytes: axum::body::Bytes) -> axum::body::Bytes {
    if !parts.status.is_client_error() && !parts.status.is_server_error() || is_json(&parts.headers)
    {
        return bytes;
    }
    if parts.status == StatusCode::METHOD_NOT_ALLOWED {
        // GitHub answers unknown method/path pairs with 404.
        parts.status = StatusCode::NOT_FOUND;
    }
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = if text.is_empty() || parts.status == StatusCode::NOT_FOUND {
        parts
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_string()
    } else {
        text
    };
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
    let body = error_body(parts.status, &message, None, DOCS);
    serde_json::to_vec(&body).unwrap_or_default().into()
}

/// The answer of an injected fault, and the identity it was charged to (for headers only).
fn fault_response(
    shared: &Shared,
    fault: &Fault,
    token: Option<&str>,
    request_id: u64,
) -> (Response, Option<Identity>) {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut world = shared.world();
    let identity = world.authenticate(token).ok();
    let who = identity.clone().unwrap_or(Identity::Anonymous);
    let secondary = fault.retry_after.is_some()
        && (status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS);
    let mut response = match &fault.body {
        Some(raw) => {
            let mut r = Response::new(Body::from(raw.clone()));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
            r
        }
        None if secondary => ApiError::new(
            status,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID.",
        )
        .with_docs(SECONDARY_DOCS)
        .into_response(),
        None if fault.rate_limit_remaining_zero => {
            ApiError::new(status, rate_limit_message(&world, &who))
                .with_docs(RATE_LIMIT_DOCS)
                .into_response()
        }
        None if status.is_server_error() => ApiError::new(status, "Server Error").into_response(),
        None => ApiError::new(status, status.canonical_reason().unwrap_or("Error")).into_response(),
    };
    let bucket = *world.bucket(&who);
    drop(world);
    set_rate_headers(
        response.headers_mut(),
        bucket,
        fault.rate_limit_remaining_zero,
    );
    if let Some(seconds) = fault.retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    set_common_headers(response.headers_mut(), request_id);
    (response, identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_match_weakly_and_in_lists() {
        let tag = etag("user:a", b"[]");
        assert!(etag_matches(&tag, &tag));
        assert!(etag_matches(tag.trim_start_matches("W/"), &tag));
        assert!(etag_matches(&format!("\"x\", {tag}"), &tag));
        assert!(etag_matches("*", &tag));
        assert!(!etag_matches("W/\"x\"", &tag));
        assert_ne!(tag, etag("user:b", b"[]"));
    }

    #[test]
    fn pages_and_links() {
        let q = Query::parse(Some("state=all&per_page=100&page=2"));
        let (items, link) = paginate((0..250).collect::<Vec<_>>(), &q, "http://h", "/p");
        assert_eq!(items.first(), Some(&100));
        assert_eq!(items.len(), 100);
        let link = link.unwrap();
        assert!(link.contains("<http://h/p?state=all&per_page=100&page=3>; rel=\"next\""));
        assert!(link.contains("<http://h/p?state=all&per_page=100&page=3>; rel=\"last\""));
        assert!(link.contains("<http://h/p?state=all&per_page=100&page=1>; rel=\"prev\""));
        assert!(link.contains("rel=\"first\""));
        let (_, none) = paginate(vec![1, 2], &Query::parse(None), "http://h", "/p");
        assert!(none.is_none());
    }

    #[test]
    fn lenient_paging_parameters() {
        let p = Page::from_query(&Query::parse(Some("per_page=1000&page=0")));
        assert_eq!((p.per_page, p.page), (100, 1));
        let p = Page::from_query(&Query::parse(Some("per_page=abc&page=-3")));
        assert_eq!((p.per_page, p.page), (30, 1));
    }

    #[test]
    fn decodes_queries() {
        let q = Query::parse(Some("since=2024-01-01T00%3A00%3A00Z&labels=a+b&bad=%zz%"));
        assert_eq!(q.get("since"), Some("2024-01-01T00:00:00Z"));
        assert_eq!(q.get("labels"), Some("a b"));
        assert_eq!(q.get("bad"), Some("%zz%"));
        assert!(q.since().unwrap().is_some());
        assert!(Query::parse(Some("since=yesterday")).since().is_err());
    }

    #[test]
    fn credentials() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(credential(&h).as_deref(), Some("abc"));
        h.insert("authorization", HeaderValue::from_static("token xyz"));
        assert_eq!(credential(&h).as_deref(), Some("xyz"));
        h.insert("authorization", HeaderValue::from_static("Basic Zm9v"));
        assert_eq!(credential(&h).as_deref(), Some("Basic Zm9v"));
    }
}
