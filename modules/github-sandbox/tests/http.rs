//! The sandbox's HTTP behaviour, checked over real HTTP with a raw client.

mod common;

use std::io::Read;
use std::time::Duration;

use common::{REPO, call, get, get_if, sandbox_with_bot, send, unix_now, unsigned_jwt};
use productbuilder_github_sandbox::{Fault, Method, NewPr, Sandbox};
use serde_json::Value;

/// A sandbox with `acme/shop`, a bot token with push access and one open pull request.
async fn setup() -> (Sandbox, u64) {
    let sb = sandbox_with_bot().await;
    let pr = sb.open_pr(
        REPO,
        NewPr::new("Add banner", "alice", "banner")
            .with_file("compose.yaml", "services:\n  web: {}\n")
            .with_label("preview"),
    );
    (sb, pr)
}

#[tokio::test]
async fn conditional_get_is_free_and_changes_after_a_push() {
    let (sb, pr) = setup().await;
    let url = sb.url();
    let path = "/repos/acme/shop/pulls?state=open&sort=updated&direction=desc&per_page=100";

    let first = get(&url, "bot-token", path).await;
    assert_eq!(first.status, 200);
    let etag = first.header("etag").expect("an ETag").to_string();
    assert!(etag.starts_with("W/\""), "weak ETag: {etag}");
    assert_eq!(first.num("x-ratelimit-limit"), 5000);
    assert_eq!(first.num("x-ratelimit-remaining"), 4999);
    assert_eq!(first.num("x-ratelimit-used"), 1);
    assert_eq!(first.header("x-ratelimit-resource"), Some("core"));
    assert!(first.num("x-ratelimit-reset") > unix_now() as u64);

    let second = get_if(&url, "bot-token", path, &etag).await;
    assert_eq!(second.status, 304);
    assert!(second.body.is_empty());
    assert_eq!(second.header("etag"), Some(etag.as_str()));
    assert_eq!(second.num("x-ratelimit-remaining"), 4999, "a 304 is free");
    let log = sb.requests();
    let last = log.last().expect("logged");
    assert!(last.if_none_match && !last.counted && last.status == 304);
    assert_eq!(last.identity.as_deref(), Some("user:preview-bot"));
    assert_eq!(last.token.as_deref(), Some("bot-token"));

    let new_sha = sb.push(REPO, pr, vec![("index.html".into(), b"v2".to_vec())]);
    let third = get_if(&url, "bot-token", path, &etag).await;
    assert_eq!(third.status, 200);
    assert_ne!(third.header("etag"), Some(etag.as_str()));
    assert_eq!(third.json()[0]["head"]["sha"], new_sha);
    assert_eq!(third.num("x-ratelimit-remaining"), 4998);
    assert_eq!(sb.rate_limit_remaining("bot-token"), 4998);
    sb.shutdown().await;
}

#[tokio::test]
async fn etags_follow_the_identity_not_the_token() {
    let (sb, _) = setup().await;
    let url = sb.url();
    sb.add_app(11);
    sb.install(11, 77, &[REPO]);
    let now = unix_now();
    let jwt = unsigned_jwt(11, now - 60, now + 540);
    let mint = || async {
        let r = call(
            &url,
            &jwt,
            "POST",
            "/app/installations/77/access_tokens",
            "",
        )
        .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["token"].as_str().expect("token").to_string()
    };
    let path = "/repos/acme/shop/pulls";
    let token1 = mint().await;
    let first = get(&url, &token1, path).await;
    assert_eq!(first.status, 200);
    let etag = first.header("etag").expect("etag").to_string();

    // Rotation: a new token of the same installation keeps the 304.
    let token2 = mint().await;
    assert_ne!(token1, token2);
    let again = get_if(&url, &token2, path, &etag).await;
    assert_eq!(again.status, 304);
    let log = sb.requests();
    assert_eq!(
        log.last().and_then(|r| r.identity.clone()).as_deref(),
        Some("installation:77")
    );

    // Two different users reading the same body get different ETags.
    sb.add_token("t-carol", "carol");
    sb.add_token("t-dave", "dave");
    let carol = get(&url, "t-carol", path).await;
    let dave = get(&url, "t-dave", path).await;
    assert_eq!(carol.body, dave.body);
    assert_ne!(carol.header("etag"), dave.header("etag"));
    assert_eq!(
        get_if(&url, "t-dave", path, carol.header("etag").unwrap_or(""))
            .await
            .status,
        200
    );

    // Expired installation tokens are refused.
    sb.expire_installation_tokens();
    let expired = get(&url, &token2, path).await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.json()["message"], "Bad credentials");
    let token3 = mint().await;
    assert_eq!(get_if(&url, &token3, path, &etag).await.status, 304);
    sb.shutdown().await;
}

#[tokio::test]
async fn link_headers_page_through_250_pull_requests() {
    let sb = Sandbox::start().await.expect("start");
    sb.create_repo("acme", "shop");
    sb.add_token("t", "reader");
    for i in 0..250 {
        sb.open_pr(
            REPO,
            NewPr::new(&format!("PR {i}"), "alice", &format!("b{i}")),
        );
    }
    let url = sb.url();
    let first = get(&url, "t", "/repos/acme/shop/pulls?state=all&per_page=100").await;
    assert_eq!(first.status, 200);
    let last = first.link("last").expect("rel=last");
    assert!(
        last.starts_with(&url),
        "absolute URL on the sandbox: {last}"
    );
    assert!(last.ends_with("page=3"), "{last}");
    assert!(first.link("prev").is_none() && first.link("first").is_none());

    let mut numbers = Vec::new();
    let mut sizes = Vec::new();
    let mut page = first;
    loop {
        let items = page.json();
        let items = items.as_array().expect("array");
        sizes.push(items.len());
        numbers.extend(items.iter().map(|p| p["number"].as_u64().expect("number")));
        match page.link("next") {
            Some(next) => {
                assert!(next.contains("per_page=100") && next.contains("state=all"));
                page = get(&url, "t", &next).await;
                assert_eq!(page.status, 200);
            }
            None => break,
        }
    }
    assert_eq!(sizes, [100, 100, 50]);
    assert!(page.link("prev").is_some_and(|p| p.ends_with("page=2")));
    assert!(page.link("first").is_some_and(|p| p.ends_with("page=1")));
    assert!(page.link("last").is_none());
    // Newest first by default, each exactly once.
    assert_eq!(numbers.first(), Some(&250));
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), 250);

    // per_page above 100 is clamped; the default is 30.
    let big = get(&url, "t", "/repos/acme/shop/pulls?per_page=1000").await;
    assert_eq!(big.json().as_array().map(Vec::len), Some(100));
    let default = get(&url, "t", "/repos/acme/shop/pulls").await;
    assert_eq!(default.json().as_array().map(Vec::len), Some(30));
    sb.shutdown().await;
}

/// The `number` of each item in a JSON array.
fn numbers(items: &Value) -> Vec<u64> {
    items
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i["number"].as_u64())
        .collect()
}

#[tokio::test]
async fn issues_since_is_inclusive_and_comments_bump_updated_at() {
    let (sb, pr) = setup().await;
    let url = sb.url();
    let first = sb.create_issue(REPO, "Bug", "it breaks", "bob");
    let second = sb.create_issue(REPO, "Idea", "make it blue", "carol");
    let list = get(
        &url,
        "bot-token",
        "/repos/acme/shop/issues?state=all&sort=updated&direction=asc",
    )
    .await;
    let items = list.json();
    assert_eq!(numbers(&items), [pr, first, second]);
    let items = items.as_array().expect("array").clone();
    assert!(
        items[0].get("pull_request").is_some(),
        "PRs carry pull_request"
    );
    assert!(items[1].get("pull_request").is_none());
    let stamps: Vec<&str> = items
        .iter()
        .filter_map(|i| i["updated_at"].as_str())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {stamps:?}"
    );

    // `since` equal to an item's updated_at includes that item.
    let since = stamps[1];
    let path =
        format!("/repos/acme/shop/issues?since={since}&state=all&sort=updated&direction=asc");
    let listed = get(&url, "bot-token", &path).await.json();
    assert_eq!(numbers(&listed), [first, second]);

    // A comment on the pull request moves it past the cursor.
    let comment = sb.add_comment(REPO, pr, "bob", "/preview please");
    let listed = get(&url, "bot-token", &path).await.json();
    assert_eq!(numbers(&listed), [first, second, pr]);

    // Repository-wide comments with `since`.
    let comments = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/issues/comments?since={since}&sort=updated&direction=asc"),
    )
    .await;
    let comments = comments.json();
    assert_eq!(comments[0]["id"], comment);
    assert_eq!(comments[0]["body"], "/preview please");
    assert!(
        comments[0]["issue_url"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("/issues/{pr}")))
    );
    let later = comments[0]["updated_at"]
        .as_str()
        .expect("stamp")
        .to_string();
    let after = get(
        &url,
        "bot-token",
        &format!(
            "/repos/acme/shop/issues/comments?since={}",
            later.replace("Z", "%2B00:00")
        ),
    )
    .await;
    assert_eq!(after.json().as_array().map(Vec::len), Some(1), "inclusive");

    let bad = get(&url, "bot-token", "/repos/acme/shop/issues?since=yesterday").await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.json()["message"], "Validation Failed");
    sb.shutdown().await;
}

#[tokio::test]
async fn content_writes_require_push() {
    let (sb, pr) = setup().await;
    let url = sb.url();
    sb.add_token("reader-token", "reader");
    let path = format!("/repos/acme/shop/issues/{pr}/comments");

    let denied = call(&url, "reader-token", "POST", &path, r#"{"body":"hi"}"#).await;
    assert_eq!(denied.status, 403);
    assert!(
        denied.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("not accessible"))
    );
    let anonymous = send(&url, "POST", &path, &[], Some(r#"{"body":"hi"}"#)).await;
    assert_eq!(anonymous.status, 401);
    let status = call(
        &url,
        "reader-token",
        "POST",
        &format!("/repos/acme/shop/statuses/{}", sb.head_sha(REPO, pr)),
        r#"{"state":"success"}"#,
    )
    .await;
    assert_eq!(status.status, 403);
    assert!(sb.comments(REPO, pr).is_empty());

    let created = call(
        &url,
        "bot-token",
        "POST",
        &path,
        r#"{"body":"Preview: pending"}"#,
    )
    .await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_u64().expect("id");
    assert!(
        created
            .header("location")
            .is_some_and(|l| l.ends_with(&format!("/issues/comments/{id}")))
    );
    assert_eq!(created.json()["user"]["login"], "preview-bot");

    let comment_path = format!("/repos/acme/shop/issues/comments/{id}");
    let edited = call(
        &url,
        "bot-token",
        "PATCH",
        &comment_path,
        r#"{"body":"Preview: ready"}"#,
    )
    .await;
    assert_eq!(edited.status, 200);
    let comments = sb.comments(REPO, pr);
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].body, "Preview: ready");
    assert_eq!(comments[0].author, "preview-bot");
    assert!(comments[0].updated_at > comments[0].created_at);
    assert_eq!(
        call(
            &url,
            "reader-token",
            "PATCH",
            &comment_path,
            r#"{"body":"x"}"#
        )
        .await
        .status,
        403
    );

    // Bad input is answered, not panicked on.
    assert_eq!(
        call(&url, "bot-token", "POST", &path, "{not json")
            .await
            .status,
        400
    );
    assert_eq!(
        call(&url, "bot-token", "POST", &path, r#"{"text":"x"}"#)
            .await
            .status,
        422
    );
    assert_eq!(
        call(&url, "bot-token", "POST", &path, r#"{"body":42}"#)
            .await
            .status,
        422
    );
    assert_eq!(
        call(
            &url,
            "bot-token",
            "POST",
            "/repos/acme/shop/issues/999/comments",
            r#"{"body":"x"}"#
        )
        .await
        .status,
        404
    );
    assert_eq!(
        call(
            &url,
            "bot-token",
            "POST",
            "/repos/acme/shop/issues/abc/comments",
            r#"{"body":"x"}"#
        )
        .await
        .status,
        404
    );

    let deleted = send(
        &url,
        "DELETE",
        &comment_path,
        &[("Authorization", "Bearer bot-token")],
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    assert!(sb.comments(REPO, pr).is_empty());
    sb.shutdown().await;
}

fn unpack(gz: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("entry");
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).expect("content");
        out.push((path, content));
    }
    out
}

#[tokio::test]
async fn tarballs_redirect_and_keep_old_shas() {
    let (sb, pr) = setup().await;
    let url = sb.url();
    let old_sha = sb.head_sha(REPO, pr);
    let new_sha = sb.push(
        REPO,
        pr,
        vec![("web/index.html".into(), b"<h1>v2</h1>".to_vec())],
    );
    assert_eq!(new_sha.len(), 40);
    assert!(new_sha.chars().all(|c| c.is_ascii_hexdigit()));

    let redirect = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/tarball/{new_sha}"),
    )
    .await;
    assert_eq!(redirect.status, 302);
    let location = redirect.header("location").expect("Location").to_string();
    assert_eq!(
        location,
        format!("{url}/_sandbox/tarballs/acme/shop/{new_sha}")
    );

    let download = send(&url, "GET", &location, &[], None).await;
    assert_eq!(download.status, 200);
    assert_eq!(download.header("content-type"), Some("application/x-gzip"));
    let files = unpack(&download.body);
    let top = format!("acme-shop-{}", &new_sha[..7]);
    assert_eq!(
        files,
        [
            (
                format!("{top}/compose.yaml"),
                b"services:\n  web: {}\n".to_vec()
            ),
            (format!("{top}/web/index.html"), b"<h1>v2</h1>".to_vec()),
        ]
    );

    // The old sha still downloads, with its own content.
    let old = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/tarball/{old_sha}"),
    )
    .await;
    let old = send(
        &url,
        "GET",
        old.header("location").expect("Location"),
        &[],
        None,
    )
    .await;
    let files = unpack(&old.body);
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0].0,
        format!("acme-shop-{}/compose.yaml", &old_sha[..7])
    );

    // Branch names and pull refs resolve to the current head.
    let by_branch = get(&url, "bot-token", "/repos/acme/shop/tarball/banner").await;
    assert!(
        by_branch
            .header("location")
            .is_some_and(|l| l.ends_with(&new_sha))
    );
    let by_ref = get(
        &url,
        "bot-token",
        &format!("/repos/acme/shop/tarball/refs/pull/{pr}/head"),
    )
    .await;
    assert!(
        by_ref
            .header("location")
            .is_some_and(|l| l.ends_with(&new_sha))
    );
    assert_eq!(
        get(&url, "bot-token", "/repos/acme/shop/tarball/nope")
            .await
            .status,
        404
    );
    assert_eq!(
        send(&url, "GET", "/_sandbox/tarballs/acme/shop/0000", &[], None)
            .await
            .status,
        404
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn fork_pull_requests_have_a_fork_head_repo() {
    let (sb, _) = setup().await;
    let pr = sb.open_pr(
        REPO,
        NewPr::new("From a fork", "mallory", "evil")
            .from_fork()
            .with_file("x", "y"),
    );
    let pull = get(
        &sb.url(),
        "bot-token",
        &format!("/repos/acme/shop/pulls/{pr}"),
    )
    .await
    .json();
    assert_eq!(pull["head"]["repo"]["full_name"], "mallory/shop");
    assert_eq!(pull["head"]["repo"]["fork"], true);
    assert_eq!(pull["head"]["repo"]["owner"]["login"], "mallory");
    assert_eq!(pull["base"]["repo"]["full_name"], "acme/shop");
    assert_ne!(pull["head"]["repo"]["id"], pull["base"]["repo"]["id"]);
    assert_eq!(pull["head"]["label"], "mallory:evil");
    // Its head sha downloads from the base repository too.
    let sha = pull["head"]["sha"].as_str().expect("sha");
    assert_eq!(
        get(
            &sb.url(),
            "bot-token",
            &format!("/repos/acme/shop/tarball/{sha}")
        )
        .await
        .status,
        302
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn injected_faults_apply_then_clear() {
    let (sb, _) = setup().await;
    let url = sb.url();
    let path = "/repos/acme/shop/pulls";

    sb.inject(Fault::new("/repos/acme/shop/pulls", 502));
    let failed = get(&url, "bot-token", path).await;
    assert_eq!(failed.status, 502);
    assert_eq!(failed.json()["message"], "Server Error");
    assert_eq!(get(&url, "bot-token", path).await.status, 200);

    sb.inject(
        Fault::new("/repos/", 403)
            .retry_after(60)
            .method(Method::GET),
    );
    let limited = get(&url, "bot-token", path).await;
    assert_eq!(limited.status, 403);
    assert_eq!(limited.header("retry-after"), Some("60"));
    assert!(
        limited.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("secondary rate limit"))
    );
    assert!(!sb.requests().last().is_some_and(|r| r.counted));

    sb.inject(
        Fault::new("/repos/acme/shop/pulls", 429)
            .retry_after(1)
            .times(2),
    );
    assert_eq!(get(&url, "bot-token", path).await.status, 429);
    assert_eq!(get(&url, "bot-token", path).await.status, 429);
    assert_eq!(get(&url, "bot-token", path).await.status, 200);

    sb.inject(Fault::new("/repos/acme/shop/pulls", 200).body("[{\"number\": "));
    let malformed = get(&url, "bot-token", path).await;
    assert_eq!(malformed.status, 200);
    assert_eq!(malformed.body, b"[{\"number\": ");

    sb.inject(Fault::new("/repos/acme/shop/pulls", 403).rate_limit_exhausted());
    let exhausted = get(&url, "bot-token", path).await;
    assert_eq!(exhausted.status, 403);
    assert_eq!(exhausted.num("x-ratelimit-remaining"), 0);

    // Faults only match their method and prefix.
    sb.inject(Fault::new("/repos/acme/shop/issues", 500).method(Method::POST));
    assert_eq!(
        get(&url, "bot-token", "/repos/acme/shop/issues")
            .await
            .status,
        200
    );
    assert_eq!(get(&url, "bot-token", path).await.status, 200);
    sb.shutdown().await;
}

#[tokio::test]
async fn delays_count_as_in_flight() {
    let (sb, _) = setup().await;
    let url = sb.url();
    sb.clear_requests();
    sb.inject(Fault::delay_only("/repos/acme/shop/pulls", Duration::from_millis(300)).times(3));
    let (a, b, c) = tokio::join!(
        get(&url, "bot-token", "/repos/acme/shop/pulls"),
        get(&url, "bot-token", "/repos/acme/shop/pulls"),
        get(&url, "bot-token", "/repos/acme/shop/pulls"),
    );
    assert_eq!((a.status, b.status, c.status), (200, 200, 200));
    assert_eq!(sb.in_flight_peak(), 3);
    assert_eq!(sb.requests().len(), 3);
    sb.clear_requests();
    assert_eq!(sb.in_flight_peak(), 0);
    sb.shutdown().await;
}

#[tokio::test]
async fn unknown_tokens_get_401() {
    let (sb, _) = setup().await;
    let r = get(&sb.url(), "nope", "/repos/acme/shop/pulls").await;
    assert_eq!(r.status, 401);
    let body = r.json();
    assert_eq!(body["message"], "Bad credentials");
    assert!(body["documentation_url"].is_string());
    assert!(r.header("x-ratelimit-limit").is_some());
    let log = sb.requests();
    let last = log.last().expect("logged");
    assert!(!last.counted && last.identity.is_none() && last.status == 401);
    assert_eq!(sb.rate_limit_remaining("bot-token"), 5000);
    sb.shutdown().await;
}

#[tokio::test]
async fn exhausted_rate_limit_gives_403_with_remaining_zero() {
    let (sb, _) = setup().await;
    let url = sb.url();
    sb.set_rate_limit("bot-token", 5000, 2, Duration::from_secs(600));
    let path = "/repos/acme/shop";
    let one = get(&url, "bot-token", path).await;
    assert_eq!((one.status, one.num("x-ratelimit-remaining")), (200, 1));
    let two = get(&url, "bot-token", path).await;
    assert_eq!((two.status, two.num("x-ratelimit-remaining")), (200, 0));
    let three = get(&url, "bot-token", path).await;
    assert_eq!(three.status, 403);
    assert_eq!(three.num("x-ratelimit-remaining"), 0);
    assert!(
        three.json()["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("API rate limit exceeded"))
    );
    let reset = three.num("x-ratelimit-reset") as i64;
    assert!((reset - unix_now() - 600).abs() <= 2);

    // /rate_limit is free and reports the same numbers.
    let overview = get(&url, "bot-token", "/rate_limit").await;
    assert_eq!(overview.status, 200);
    let body = overview.json();
    assert_eq!(body["resources"]["core"]["remaining"], 0);
    assert_eq!(body["rate"]["limit"], 5000);
    assert!(!sb.requests().last().is_some_and(|r| r.counted));

    // Another user of the same sandbox is unaffected.
    sb.add_token("other", "someone");
    assert_eq!(get(&url, "other", path).await.status, 200);
    sb.shutdown().await;
}

#[tokio::test]
async fn repository_visibility_and_permissions() {
    let (sb, _) = setup().await;
    let url = sb.url();
    sb.add_token("owner-token", "acme");
    sb.add_token("stranger-token", "stranger");
    let repo = get(&url, "owner-token", "/repos/acme/shop").await.json();
    assert_eq!(repo["full_name"], "acme/shop");
    assert_eq!(repo["default_branch"], "main");
    assert_eq!(repo["permissions"]["admin"], true);
    assert!(
        repo["clone_url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/acme/shop.git"))
    );
    let bot = get(&url, "bot-token", "/repos/ACME/Shop").await.json();
    assert_eq!(
        bot["permissions"],
        serde_json::json!({"admin": false, "maintain": false, "push": true, "triage": true, "pull": true})
    );
    let stranger = get(&url, "stranger-token", "/repos/acme/shop").await.json();
    assert_eq!(stranger["permissions"]["push"], false);

    sb.set_private(REPO, true);
    let hidden = get(&url, "stranger-token", "/repos/acme/shop").await;
    assert_eq!(hidden.status, 404);
    assert_eq!(hidden.json()["message"], "Not Found");
    assert_eq!(
        send(&url, "GET", "/repos/acme/shop/pulls", &[], None)
            .await
            .status,
        404
    );
    assert_eq!(
        get(&url, "bot-token", "/repos/acme/shop").await.json()["private"],
        true
    );
    assert_eq!(
        get(&url, "bot-token", "/repos/acme/missing").await.status,
        404
    );
    let unknown = get(&url, "bot-token", "/no/such/route").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["message"], "Not Found");
    let wrong_method = send(
        &url,
        "PUT",
        "/repos/acme/shop",
        &[("Authorization", "Bearer bot-token")],
        None,
    )
    .await;
    assert_eq!(wrong_method.status, 404);
    assert!(wrong_method.json()["message"].is_string());
    sb.shutdown().await;
}

#[tokio::test]
async fn statuses_and_deployments() {
    let (sb, pr) = setup().await;
    let url = sb.url();
    let sha = sb.head_sha(REPO, pr);

    let status = call(&url, "bot-token", "POST", &format!("/repos/acme/shop/statuses/{sha}"),
        r#"{"state":"pending","context":"preview","description":"Building","target_url":"http://preview.local/1"}"#).await;
    assert_eq!(status.status, 201);
    assert_eq!(status.json()["creator"]["login"], "preview-bot");
    let bad = call(
        &url,
        "bot-token",
        "POST",
        &format!("/repos/acme/shop/statuses/{sha}"),
        r#"{"state":"great"}"#,
    )
    .await;
    assert_eq!(bad.status, 422);
    let unknown = call(
        &url,
        "bot-token",
        "POST",
        "/repos/acme/shop/statuses/deadbeef",
        r#"{"state":"success"}"#,
    )
    .await;
    assert_eq!(unknown.status, 422);
    let recorded = sb.statuses(REPO, &sha);
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (recorded[0].state.as_str(), recorded[0].context.as_str()),
        ("pending", "preview")
    );
    assert_eq!(
        recorded[0].target_url.as_deref(),
        Some("http://preview.local/1")
    );

    // Required contexts default to "all contexts on the commit": pending blocks.
    let blocked = call(
        &url,
        "bot-token",
        "POST",
        "/repos/acme/shop/deployments",
        r#"{"ref":"banner","environment":"pr-1"}"#,
    )
    .await;
    assert_eq!(blocked.status, 409);
    let created = call(&url, "bot-token", "POST", "/repos/acme/shop/deployments",
        r#"{"ref":"banner","environment":"pr-1","auto_merge":false,"required_contexts":[],"transient_environment":true,"production_environment":false,"description":"preview"}"#).await;
    assert_eq!(created.status, 201);
    let deployment = created.json();
    assert_eq!(deployment["sha"], sha.as_str());
    assert_eq!(deployment["ref"], "banner");
    let id = deployment["id"].as_u64().expect("id");
    let st = call(&url, "bot-token", "POST", &format!("/repos/acme/shop/deployments/{id}/statuses"),
        r#"{"state":"success","environment_url":"http://pr-1.preview.local","log_url":"http://logs.local/1"}"#).await;
    assert_eq!(st.status, 201);
    assert_eq!(st.json()["environment_url"], "http://pr-1.preview.local");
    assert_eq!(
        call(
            &url,
            "bot-token",
            "POST",
            &format!("/repos/acme/shop/deployments/{id}/statuses"),
            r#"{"state":"done"}"#
        )
        .await
        .status,
        422
    );
    assert_eq!(
        call(
            &url,
            "bot-token",
            "POST",
            "/repos/acme/shop/deployments/999/statuses",
            r#"{"state":"success"}"#
        )
        .await
        .status,
        404
    );
    assert_eq!(
        call(
            &url,
            "bot-token",
            "POST",
            "/repos/acme/shop/deployments",
            r#"{"ref":"no-such-branch"}"#
        )
        .await
        .status,
        422
    );

    let listed = get(
        &url,
        "bot-token",
        "/repos/acme/shop/deployments?environment=pr-1",
    )
    .await
    .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(
        get(
            &url,
            "bot-token",
            "/repos/acme/shop/deployments?environment=other"
        )
        .await
        .json(),
        Value::Array(vec![])
    );
    let records = sb.deployments(REPO);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].environment, "pr-1");
    assert_eq!(
        records[0].statuses,
        [(
            "success".to_string(),
            Some("http://pr-1.preview.local".to_string())
        )]
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn app_jwts_are_checked() {
    let (sb, _) = setup().await;
    let url = sb.url();
    sb.add_app(5);
    sb.install(5, 50, &[REPO]);
    let now = unix_now();
    let path = "/app/installations/50/access_tokens";

    let expired = call(
        &url,
        &unsigned_jwt(5, now - 1200, now - 600),
        "POST",
        path,
        "",
    )
    .await;
    assert_eq!(expired.status, 401);
    assert!(
        expired.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("'exp'"))
    );
    let too_long = call(&url, &unsigned_jwt(5, now, now + 3600), "POST", path, "").await;
    assert_eq!(too_long.status, 401);
    let stranger = call(
        &url,
        &unsigned_jwt(6, now - 60, now + 500),
        "POST",
        path,
        "",
    )
    .await;
    assert_eq!(stranger.status, 401);
    assert_eq!(call(&url, "bot-token", "POST", path, "").await.status, 401);
    assert_eq!(call(&url, "a.b.c", "POST", path, "").await.status, 401);

    let jwt = unsigned_jwt(5, now - 60, now + 500);
    assert_eq!(
        call(
            &url,
            &jwt,
            "POST",
            "/app/installations/51/access_tokens",
            ""
        )
        .await
        .status,
        404
    );
    let minted = call(&url, &jwt, "POST", path, r#"{"repositories":["shop"]}"#).await;
    assert_eq!(minted.status, 201);
    let body = minted.json();
    let token = body["token"].as_str().expect("token");
    assert!(token.starts_with("ghs_"));
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().expect("expires_at"))
            .expect("RFC 3339");
    assert!((expires.timestamp() - now - 3600).abs() <= 5);
    assert_eq!(body["repositories"][0]["full_name"], "acme/shop");

    let installation = get(&url, &jwt, "/repos/acme/shop/installation").await;
    assert_eq!(installation.status, 200);
    assert_eq!(installation.json()["id"], 50);
    assert_eq!(installation.json()["app_id"], 5);
    assert_eq!(
        get(&url, &jwt, "/repos/acme/other/installation")
            .await
            .status,
        404
    );
    assert_eq!(get(&url, &jwt, "/repos/acme/shop").await.status, 403);

    // The installation writes as its bot user.
    let comment = call(
        &url,
        token,
        "POST",
        "/repos/acme/shop/issues/1/comments",
        r#"{"body":"hello"}"#,
    )
    .await;
    assert_eq!(comment.status, 201);
    assert_eq!(comment.json()["user"]["login"], "sandbox-app-5[bot]");
    assert_eq!(comment.json()["user"]["type"], "Bot");
    sb.shutdown().await;
}

/// Method, path, extra headers, body.
type HostileCase = (
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
    Option<String>,
);

#[tokio::test]
async fn hostile_input_gets_github_errors_not_panics() {
    let (sb, _) = setup().await;
    let url = sb.url();
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<HostileCase> = vec![
        ("GET", "/repos/%FF%FE/shop".into(), vec![], None),
        (
            "GET",
            "/repos/acme/shop/pulls/99999999999999999999999".into(),
            vec![],
            None,
        ),
        (
            "GET",
            "/repos/acme/shop/pulls?per_page=-1&page=18446744073709551615".into(),
            vec![],
            None,
        ),
        (
            "GET",
            "/repos/acme/shop/pulls?state=weird".into(),
            vec![],
            None,
        ),
        (
            "GET",
            "/repos/acme/shop/issues?since=%ZZ&sort=%".into(),
            vec![],
            None,
        ),
        (
            "GET",
            "/repos/acme/shop".into(),
            vec![("Authorization", "Bearer a.b")],
            None,
        ),
        (
            "GET",
            "/repos/acme/shop".into(),
            vec![("Authorization", "Bearer eyJ.eyJ.x")],
            None,
        ),
        (
            "GET",
            "/repos/acme/shop".into(),
            vec![("Authorization", "Basic")],
            None,
        ),
        (
            "GET",
            "/repos/acme/shop".into(),
            vec![("If-None-Match", "W/\"x\", ,,*garbage")],
            None,
        ),
        (
            "POST",
            "/repos/acme/shop/issues/1/comments".into(),
            vec![],
            Some(deep.clone()),
        ),
        (
            "POST",
            "/repos/acme/shop/deployments".into(),
            vec![],
            Some("[]".into()),
        ),
        (
            "POST",
            "/repos/acme/shop/deployments".into(),
            vec![],
            Some(r#"{"ref":5}"#.into()),
        ),
        (
            "POST",
            "/repos/acme/shop/statuses/x".into(),
            vec![],
            Some("null".into()),
        ),
        (
            "DELETE",
            "/repos/acme/shop/issues/comments/1".into(),
            vec![],
            None,
        ),
        (
            "GET",
            "/repos/acme/shop/tarball/..%2F..%2Fetc".into(),
            vec![],
            None,
        ),
        (
            "GET",
            "/_sandbox/tarballs/acme/shop/..".into(),
            vec![],
            None,
        ),
        ("PATCH", "/rate_limit".into(), vec![], None),
    ];
    for (method, path, extra, body) in cases {
        let mut headers = vec![("Authorization", "Bearer bot-token")];
        headers.extend(extra);
        let r = send(&url, method, &path, &headers, body.as_deref()).await;
        assert!(
            r.status >= 200 && r.status < 600,
            "{method} {path}: {}",
            r.status
        );
        if r.status >= 400 {
            assert!(!r.body.is_empty(), "{method} {path}: {r:?}");
            let body = r.json();
            assert!(body["message"].is_string(), "{method} {path}: {body}");
        }
    }
    // Past the last page: an empty list that still links back.
    let beyond = get(&url, "bot-token", "/repos/acme/shop/pulls?page=5").await;
    assert_eq!(beyond.json(), Value::Array(vec![]));
    assert!(beyond.link("first").is_some());
    // The server is still healthy.
    assert_eq!(get(&url, "bot-token", "/repos/acme/shop").await.status, 200);
    sb.shutdown().await;
}
