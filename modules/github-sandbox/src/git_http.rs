//! Git's smart HTTP protocol for git-backed repositories, at `{sandbox}/git/{owner}/{name}.git/…`,
//! bridged to the real `git http-backend` (CGI: one process per request).
//!
//! Authentication is GitHub's: HTTP Basic with a known token as the password (any user name,
//! `x-access-token` by convention). Reads (`git-upload-pack`, `info/refs`) need read access,
//! pushes (`git-receive-pack`) write access. Unlike GitHub, anonymous requests are refused even
//! for public repositories (401 with `WWW-Authenticate: Basic`), so a test proves the token
//! travelled. Every request is logged in [`GitRequest`]s. After a push the branch heads are
//! read back before the answer goes out, so an API call made after `git push` returns sees
//! the new heads.

use std::io;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::Shared;
use crate::world::{GitRequest, Identity, Permission, repo_key};

/// How long one `git http-backend` may run (a clone or push of a test repository takes
/// milliseconds; a stuck one is killed).
const BACKEND_DEADLINE: Duration = Duration::from_secs(120);

/// At most this much of `git http-backend`'s stderr is logged.
const STDERR_LOG_LIMIT: usize = 4096;

/// The route handler: `/git/{owner}/{repo}/{*rest}` with any method.
pub(crate) async fn serve(
    State(s): State<Arc<Shared>>,
    Path((owner, repo, rest)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let query = uri.query().unwrap_or("").to_string();
    let service = service(&rest, &query);
    let call = Call {
        owner: &owner,
        name: repo.strip_suffix(".git").unwrap_or(&repo),
        rest: &rest,
        query: &query,
        method: &method,
        headers: &headers,
        service,
    };
    let (response, identity) = match answer(&s, &call, body).await {
        Ok(answered) => answered,
        Err(refusal) => {
            let identity = match &refusal {
                Refusal::Denied { identity, .. } => Some(identity.clone()),
                _ => None,
            };
            (refusal.into_response(), identity)
        }
    };
    s.world().git_requests.push(GitRequest {
        method: method.clone(),
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string()),
        authorized: headers.contains_key(AUTHORIZATION),
        identity: identity.as_ref().map(Identity::key),
        service: service.map(str::to_string),
        content_encoding: headers
            .get(axum::http::header::CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        status: response.status().as_u16(),
    });
    response
}

/// One git request, as the route received it.
struct Call<'a> {
    owner: &'a str,
    name: &'a str,
    rest: &'a str,
    query: &'a str,
    method: &'a Method,
    headers: &'a HeaderMap,
    service: Option<&'static str>,
}

/// The git service a request is for: `info/refs?service=…` names it, the POSTs are to it.
fn service(rest: &str, query: &str) -> Option<&'static str> {
    let named = |s: &str| match s {
        "git-upload-pack" => Some("git-upload-pack"),
        "git-receive-pack" => Some("git-receive-pack"),
        _ => None,
    };
    if rest == "info/refs" {
        return query
            .split('&')
            .find_map(|pair| pair.strip_prefix("service="))
            .and_then(named);
    }
    named(rest)
}

/// Why a git request is refused, answered as GitHub's git endpoints do (plain text).
#[derive(Debug)]
enum Refusal {
    /// No or bad credentials: 401 with a Basic challenge.
    Unauthenticated,
    /// The repository is missing, not git-backed, invisible to the caller, or the path is not
    /// one git would ask for.
    NotFound,
    /// Read access, and a push: 403.
    Denied {
        repo: String,
        login: String,
        identity: Identity,
    },
    /// `git http-backend` could not be run.
    Backend(io::Error),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Refusal::Unauthenticated => {
                let mut response =
                    (StatusCode::UNAUTHORIZED, "Invalid username or token.\n").into_response();
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"GitHub\""),
                );
                return response;
            }
            Refusal::NotFound => (StatusCode::NOT_FOUND, "Repository not found.\n".to_string()),
            Refusal::Denied { repo, login, .. } => (
                StatusCode::FORBIDDEN,
                format!("Permission to {repo}.git denied to {login}.\n"),
            ),
            Refusal::Backend(error) => {
                tracing::warn!(%error, "github sandbox: git http-backend failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "git http-backend failed\n".to_string(),
                )
            }
        };
        (status, text).into_response()
    }
}

/// The password of an `Authorization: Basic` header (the token); the user name is ignored.
pub(crate) fn basic_password(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = raw.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_user, password) = decoded.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// Whether `rest` is a relative path without empty, `.` or `..` parts.
fn safe_rest(rest: &str) -> bool {
    !rest.is_empty()
        && rest
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

async fn answer(
    s: &Shared,
    call: &Call<'_>,
    body: Body,
) -> Result<(Response, Option<Identity>), Refusal> {
    let password = basic_password(call.headers).ok_or(Refusal::Unauthenticated)?;
    let key = repo_key(call.owner, call.name);
    let (identity, login) = {
        let world = s.world();
        let identity = world
            .authenticate(Some(&password))
            .map_err(|_| Refusal::Unauthenticated)?;
        if identity == Identity::Anonymous {
            return Err(Refusal::Unauthenticated);
        }
        let repo = world
            .repos
            .get(&key)
            .filter(|r| r.git.is_some())
            .ok_or(Refusal::NotFound)?;
        let have = world.permission(&identity, repo).ok_or(Refusal::NotFound)?;
        let need = if call.service == Some("git-receive-pack") {
            Permission::Push
        } else {
            Permission::Pull
        };
        let login = world.actor_login(&identity);
        if have < need {
            return Err(Refusal::Denied {
                repo: repo.full_name(),
                login,
                identity,
            });
        }
        (identity, login)
    };
    if !safe_rest(call.rest) {
        return Err(Refusal::NotFound);
    }
    let response = run_backend(s, call, &key, &login, body)
        .await
        .map_err(Refusal::Backend)?;
    let pushed = call.service == Some("git-receive-pack") && *call.method == Method::POST;
    if pushed && response.status().is_success() {
        s.sync_git_heads(&key).await;
    }
    Ok((response, Some(identity)))
}

/// Runs `git http-backend` for one request: the request body streamed to its stdin, its CGI
/// answer (headers, blank line, body) turned into the response.
async fn run_backend(
    s: &Shared,
    call: &Call<'_>,
    key: &str,
    login: &str,
    body: Body,
) -> io::Result<Response> {
    let mut cmd = crate::gitrepo::command(s.git_root.path());
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", s.git_root.path())
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", format!("/{key}.git/{}", call.rest))
        .env("QUERY_STRING", call.query)
        .env("REQUEST_METHOD", call.method.as_str())
        .env("REMOTE_USER", login)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1");
    let forwarded = [
        ("CONTENT_TYPE", CONTENT_TYPE.as_str()),
        ("CONTENT_LENGTH", "content-length"),
        // http-backend inflates gzip request bodies itself when told.
        ("HTTP_CONTENT_ENCODING", "content-encoding"),
        // Protocol v2 is asked for with this header.
        ("HTTP_GIT_PROTOCOL", "git-protocol"),
    ];
    for (variable, header) in forwarded {
        if let Some(value) = call.headers.get(header).and_then(|v| v.to_str().ok()) {
            cmd.env(variable, value);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(io::Error::other("git http-backend: pipes missing"));
    };
    let feed = async move {
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(io::Error::other)?;
            stdin.write_all(&chunk).await?;
        }
        stdin.shutdown().await
    };
    let read_out = async move {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).await.map(|_| out)
    };
    let read_err = async move {
        let mut err = Vec::new();
        stderr.read_to_end(&mut err).await.map(|_| err)
    };
    let run = async {
        let (fed, out, err) = tokio::join!(feed, read_out, read_err);
        let status = child.wait().await?;
        Ok::<_, io::Error>((fed, out?, err.unwrap_or_default(), status))
    };
    let (fed, out, err, status) = tokio::time::timeout(BACKEND_DEADLINE, run)
        .await
        .map_err(|_| io::Error::other("git http-backend ran past its deadline"))??;
    if let Err(error) = fed {
        // The backend may answer (an error) before reading the whole request.
        tracing::debug!(%error, "github sandbox: request body not fully read by git http-backend");
    }
    if !err.is_empty() {
        let shown = &err[..err.len().min(STDERR_LOG_LIMIT)];
        tracing::debug!(stderr = %String::from_utf8_lossy(shown), "github sandbox: git http-backend");
    }
    if !status.success() && out.is_empty() {
        return Err(io::Error::other(format!(
            "git http-backend exited {status}"
        )));
    }
    cgi_response(&out)
}

/// Parses a CGI answer: header lines (`Status:` sets the status), a blank line, the body.
fn cgi_response(out: &[u8]) -> io::Result<Response> {
    let (head, body) = split_head(out)
        .ok_or_else(|| io::Error::other("git http-backend answered without CGI headers"))?;
    let mut response = Response::new(Body::from(Bytes::copy_from_slice(body)));
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("500");
            *response.status_mut() = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

/// The header block and the body of a CGI answer (lines end in `\r\n` or `\n`).
fn split_head(out: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut i = 0;
    while i < out.len() {
        if out[i..].starts_with(b"\r\n\r\n") {
            return Some((&out[..i], &out[i + 4..]));
        }
        if out[i..].starts_with(b"\n\n") {
            return Some((&out[..i], &out[i + 2..]));
        }
        if out[i..].starts_with(b"\r\n") && i == 0 {
            return Some((&[], &out[2..]));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_read_from_the_path_and_query() {
        assert_eq!(
            service("info/refs", "service=git-receive-pack"),
            Some("git-receive-pack")
        );
        assert_eq!(service("info/refs", "service=evil"), None);
        assert_eq!(service("git-upload-pack", ""), Some("git-upload-pack"));
        assert_eq!(service("HEAD", ""), None);
    }

    #[test]
    fn basic_passwords() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_password(&h), None);
        let basic = BASE64.encode("x-access-token:tok:en");
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("basic {basic}")).unwrap(),
        );
        assert_eq!(basic_password(&h).as_deref(), Some("tok:en"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tok"));
        assert_eq!(basic_password(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_password(&h), None);
    }

    #[test]
    fn cgi_answers_are_parsed() {
        let r =
            cgi_response(b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno").unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/plain");
        let r = cgi_response(b"Content-Type: x\n\nbody").unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(cgi_response(b"no blank line").is_err());
    }

    #[test]
    fn paths_stay_inside_the_repository() {
        assert!(safe_rest("info/refs"));
        assert!(safe_rest("objects/ab/cdef"));
        for bad in ["", "../x", "a/../../b", "a//b", "./x"] {
            assert!(!safe_rest(bad), "{bad}");
        }
    }
}
