use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::RepoIdCell;

const DEFAULT_TEMPLATE: &str = "http://{repo}-pr-{number}.{domain}";
const DOMAIN: &str = "preview.localhost";

/// A random name over the characters that matter to the encoding, some of them long.
fn random_name(rng: &mut fastrand::Rng) -> String {
    const ALPHABET: &[u8] = b"aqdshx1-._Q-";
    let len = if rng.u8(..10) == 0 {
        rng.usize(40..100)
    } else {
        rng.usize(1..10)
    };
    (0..len)
        .map(|_| ALPHABET[rng.usize(..ALPHABET.len())] as char)
        .collect()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_compose_project(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The names `compose::project_name` gave before this encoding; stored in existing rows.
fn legacy_shape(s: &str) -> bool {
    s.rsplit_once("-pr-")
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn escape_leaves_ordinary_names_alone_and_marks_the_rest() {
    for (name, escaped) in [
        ("hello-world", "hello-world"),
        ("Hello-World", "hello-world"),
        ("jquery", "jquery"),
        ("q", "q"),
        ("shop.web", "shopqdweb"),
        ("my_app", "myqsapp"),
        ("a--b", "aqhqhb"),
        ("-x", "qhx"),
        ("x-", "xqh"),
        ("-", "qh"),
        ("a-.b", "a-qdb"),
        ("qd", "qqd"),
        ("q.x", "qqqdx"),
        ("qq", "qqq"),
        ("qx", "qqx"),
        ("ä", "qxc3qxa4"),
        ("{x}", "qx7bxqx7d"),
    ] {
        assert_eq!(escape(name), escaped, "{name}");
        assert_eq!(
            unescape(escaped).as_deref(),
            Some(name.to_lowercase().as_str())
        );
    }
}

#[test]
fn escape_round_trips_and_stays_a_label_fragment() {
    let mut rng = fastrand::Rng::with_seed(8);
    for _ in 0..20_000 {
        let name = random_name(&mut rng);
        let escaped = escape(&name);
        assert_eq!(
            unescape(&escaped),
            Some(name.to_ascii_lowercase()),
            "{name:?} → {escaped:?}"
        );
        assert!(!escaped.contains("--"), "{name:?} → {escaped:?}");
        assert!(
            !escaped.starts_with('-') && !escaped.ends_with('-'),
            "{name:?} → {escaped:?}"
        );
        assert!(
            escaped
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }
}

#[test]
fn project_names_are_distinct_valid_and_never_legacy_shaped() {
    // The pairs that collided before, and the case GitHub ignores.
    let pairs = [
        (("foo", "bar-baz", 1), ("foo-bar", "baz", 1)),
        (("acme", "shop.web", 1), ("acme", "shop-web", 1)),
        (("acme", "shop_web", 1), ("acme", "shop-web", 1)),
        (("acme", "shop", 12), ("acme", "shop-1", 2)),
        (("a", "b--c", 1), ("a-b", "-c", 1)),
    ];
    for ((o1, r1, n1), (o2, r2, n2)) in pairs {
        assert_ne!(project(o1, r1, n1), project(o2, r2, n2), "{o1}/{r1}#{n1}");
    }
    assert_eq!(project("Foo", "X", 3), project("foo", "x", 3));
    assert_eq!(project("acme", "shop", 42), "pb--acme--shop--42");
    assert_eq!(project_of("Acme/Shop.Web", 42), "pb--acme--shopqdweb--42");

    let mut seen: HashMap<String, (String, String, u64)> = HashMap::new();
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20_000 {
        let owner = random_name(&mut rng).to_ascii_lowercase();
        let repo = random_name(&mut rng).to_ascii_lowercase();
        let number = if rng.bool() {
            rng.u64(1..20)
        } else {
            rng.u64(1..u64::MAX)
        };
        let name = project(&owner, &repo, number);
        assert!(is_compose_project(&name), "{name}");
        assert!(!name.contains('_'), "router names replace `_`: {name}");
        assert!(!legacy_shape(&name), "{name}");
        let key = (owner, repo, number);
        if let Some(before) = seen.insert(name.clone(), key.clone()) {
            assert_eq!(before, key, "{name} names two previews");
        }
    }
}

#[test]
fn long_project_names_are_cut_and_keep_a_hash_of_the_whole() {
    let long = "x".repeat(100);
    let a = project("acme", &format!("{long}a"), 7);
    let b = project("acme", &format!("{long}b"), 7);
    let c = project("acme", &format!("{long}a"), 8);
    assert!(a.len() <= 63 && is_compose_project(&a), "{a}");
    assert!(a.starts_with("pb--acme--xxx"), "{a}");
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert!(a.rsplit_once("--h").is_some_and(|(_, h)| h.len() == 16));
}

#[test]
fn labels_are_distinct_dns_labels() {
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut rng = fastrand::Rng::with_seed(9);
    for _ in 0..20_000 {
        let name = random_name(&mut rng).to_ascii_lowercase();
        let l = label(&name);
        assert!(is_dns_label(&l) && l.len() <= LABEL_MAX, "{name:?} → {l:?}");
        // Never an IDNA-reserved label (`ab--…`, `xn--…`).
        assert_ne!(l.get(2..4), Some("--"), "{l}");
        if let Some(before) = seen.insert(l.clone(), name.clone()) {
            assert_eq!(before, name, "{l} labels two names");
        }
    }
    assert_eq!(label("Hello-World"), "hello-world");
    assert_eq!(label(&"a".repeat(40)), "a".repeat(40));
    assert_eq!(label(&"a".repeat(41)).len(), 40);
}

#[test]
fn urls_and_hosts() {
    assert_eq!(
        url(DEFAULT_TEMPLATE, DOMAIN, "Acme/Shop.Web", 42),
        "http://shopqdweb-pr-42.preview.localhost"
    );
    assert_eq!(
        url(
            "https://{owner}.{repo}.{number}.{domain}:8443/x",
            "example.com",
            "acme/shop",
            7
        ),
        "https://acme.shop.7.example.com:8443/x"
    );
    assert_eq!(
        host("https://acme.shop.7.example.com:8443/x"),
        "acme.shop.7.example.com"
    );
    assert_eq!(host("http://a.b/c"), "a.b");
    assert_eq!(host("a.b"), "a.b");
}

fn tenant(repo: &str) -> Tenant {
    let (owner, name) = repo.split_once('/').unwrap();
    Tenant {
        owner: owner.into(),
        name: name.into(),
        poll_interval: Duration::from_secs(30),
        source: format!("tenants/{}.toml", repo.replace('/', "-")),
        repo_id: RepoIdCell::default(),
    }
}

fn conflicts_of(template: &str, repos: &[&str]) -> Vec<String> {
    let tenants: Vec<Tenant> = repos.iter().map(|r| tenant(r)).collect();
    let refs: Vec<&Tenant> = tenants.iter().collect();
    conflicts(&refs, template, DOMAIN)
}

#[test]
fn colliding_hosts_are_found_for_the_configured_tenants() {
    // (template, tenants, how many problems, text every problem must contain)
    let owner_repo = "https://{repo}-{owner}-pr-{number}.{domain}";
    let table: &[(&str, &[&str], usize, &str)] = &[
        // The bug: the default template and two repositories of one name.
        (
            DEFAULT_TEMPLATE,
            &["acme/shop", "globex/shop"],
            1,
            "shop-pr-1.preview.localhost",
        ),
        (DEFAULT_TEMPLATE, &["acme/shop", "acme/blog"], 0, ""),
        (
            DEFAULT_TEMPLATE,
            &["acme/shop", "globex/shop", "initech/shop"],
            3,
            "put {owner}",
        ),
        // `{owner}` separates them.
        (owner_repo, &["acme/shop", "globex/shop"], 0, ""),
        // Repository names that escape differently.
        (
            DEFAULT_TEMPLATE,
            &["acme/shop.web", "acme/shop-web", "acme/shop_web"],
            0,
            "",
        ),
        // Text and digits: `a1`#1 and `a`#11.
        (
            "http://{repo}{number}.{domain}",
            &["acme/a1", "acme/a"],
            1,
            "a11.preview.localhost",
        ),
        // A number can never hold `-pr-`.
        (DEFAULT_TEMPLATE, &["acme/a-pr-1", "acme/a"], 0, ""),
        // A single `-` between owner and repository is ambiguous...
        (
            "http://{owner}-{repo}-{number}.{domain}",
            &["foo/bar-baz", "foo-bar/baz"],
            1,
            "foo-bar-baz-1",
        ),
        // ... `--` is not: no label contains it.
        (
            "http://{owner}--{repo}-{number}.{domain}",
            &["foo/bar-baz", "foo-bar/baz"],
            0,
            "",
        ),
        // Dots separate too.
        (
            "http://{number}.{repo}.{owner}.{domain}",
            &["foo/bar-baz", "foo-bar/baz", "acme/shop"],
            0,
            "",
        ),
        // Case does not matter in a host.
        (
            "http://{repo}-PR-{number}.{domain}",
            &["acme/shop", "globex/shop"],
            1,
            "shop-pr-1",
        ),
        // Only the host routes: what follows it does not separate tenants.
        (
            "https://pr-{number}.{domain}/{owner}/{repo}",
            &["acme/shop", "globex/blog"],
            1,
            "pr-1.preview.localhost",
        ),
        // Every pull request on one host.
        (
            "https://{domain}/{owner}/{repo}/{number}",
            &["acme/shop"],
            1,
            "no {number} in its host",
        ),
        // A label longer than DNS allows.
        (
            "http://{repo}-{owner}-pr-{number}.{domain}",
            &["acmeacmeacmeacmeacme/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
            1,
            "longer than DNS allows",
        ),
        // Same template, one tenant: nothing to collide with.
        (DEFAULT_TEMPLATE, &["acme/shop"], 0, ""),
    ];
    for (template, repos, count, needle) in table {
        let problems = conflicts_of(template, repos);
        assert_eq!(
            problems.len(),
            *count,
            "{template} {repos:?}: {problems:#?}"
        );
        for problem in &problems {
            assert!(problem.contains(needle), "{template} {repos:?}: {problem}");
        }
    }
}

#[test]
fn a_collision_names_both_tenants_and_their_files() {
    let problems = conflicts_of(DEFAULT_TEMPLATE, &["acme/shop", "globex/shop"]);
    assert_eq!(
        problems,
        [
            "tenants acme/shop (tenants/acme-shop.toml) and globex/shop (tenants/globex-shop.toml) can get the same preview host, for example shop-pr-1.preview.localhost, from preview.url_template \"http://{repo}-pr-{number}.{domain}\"; each would replace the other's preview: put {owner} in preview.url_template, for example \"https://{repo}-{owner}-pr-{number}.{domain}\""
        ]
    );
}

#[test]
fn tenants_without_previews_are_not_compared() {
    let both = [
        Arc::new(tenant("acme/shop")),
        Arc::new(tenant("globex/shop")),
    ];
    let only_acme = |t: &Tenant| t.owner == "acme";
    assert!(crate::check_names(&both, DEFAULT_TEMPLATE, DOMAIN, &only_acme).is_ok());
    let err = crate::check_names(&both, DEFAULT_TEMPLATE, DOMAIN, &|_| true).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
}

/// The decision agrees with brute force: every pair of small numbers rendered and compared.
#[test]
fn the_decision_matches_rendering_every_small_number() {
    let templates = [
        DEFAULT_TEMPLATE,
        "http://{repo}{number}.{domain}",
        "http://{number}{repo}.{domain}",
        "http://{owner}-{repo}-{number}.{domain}",
        "http://{owner}{number}{repo}.{domain}",
        "http://{repo}-{owner}-{number}.{domain}",
    ];
    let repos = [
        "a/b", "a/b1", "a1/b", "a/1b", "a-b/c", "a/b-c", "b/a", "a/b-1", "ab/c", "a/bc", "1/b",
    ];
    for template in templates {
        for (i, x) in repos.iter().enumerate() {
            for y in &repos[i + 1..] {
                let decided = !conflicts_of(template, &[x, y]).is_empty();
                let hosts = |repo: &str| -> std::collections::HashSet<String> {
                    (1..=120)
                        .map(|n| host(&url(template, DOMAIN, repo, n)).to_owned())
                        .collect()
                };
                let brute = !hosts(x).is_disjoint(&hosts(y));
                assert_eq!(decided, brute, "{template}: {x} vs {y}");
            }
        }
    }
}
