//! The callback against real HTTP servers on 127.0.0.1: a redirect is not followed (the body
//! never reaches another origin), attempts are bounded, and only http(s) URLs are called.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use productbuilder_builds::BuildId;
use productbuilder_builds::callback::{CallbackError, CallbackPolicy, Callbacks};
use tokio_util::sync::CancellationToken;

/// A server answering every POST with `answer`, counting the requests.
async fn server(
    answer: impl Fn() -> axum::response::Response + Clone + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let answer = answer.clone();
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            answer()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

fn callbacks(attempts: u32) -> Callbacks {
    Callbacks::new(
        Some(productbuilder_settings::Secret::new("k")),
        CallbackPolicy {
            attempts,
            first_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(5),
            attempt_timeout: Duration::from_secs(10),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn a_redirect_is_not_followed_to_another_origin() {
    let (elsewhere, elsewhere_hits) = server(|| StatusCode::OK.into_response()).await;
    let target = format!("{elsewhere}/steal");
    let (url, hits) = server(move || {
        (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, target.clone())],
        )
            .into_response()
    })
    .await;
    let err = callbacks(5)
        .send(
            &format!("{url}/cb"),
            BuildId(1),
            b"{}".to_vec(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, CallbackError::Refused { status: 307 });
    assert_eq!(hits.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(
        elsewhere_hits.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
}

#[tokio::test]
async fn attempts_are_bounded() {
    let (url, hits) = server(|| StatusCode::BAD_GATEWAY.into_response()).await;
    let err = callbacks(3)
        .send(&url, BuildId(2), b"{}".to_vec(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CallbackError::GaveUp {
            attempts: 3,
            last: "answered 502".into()
        }
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn only_http_and_https_urls_are_called() {
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "http://user:pw@127.0.0.1/x",
        "/cb",
    ] {
        let err = callbacks(1)
            .send(url, BuildId(3), b"{}".to_vec(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, CallbackError::Url(_)), "{url}: {err}");
    }
}

#[tokio::test]
async fn a_cancel_stops_the_retries() {
    let (url, _) = server(|| StatusCode::SERVICE_UNAVAILABLE.into_response()).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = callbacks(100)
        .send(&url, BuildId(4), b"{}".to_vec(), &cancel)
        .await
        .unwrap_err();
    assert_eq!(err, CallbackError::Cancelled);
}
