//! The webhook accelerator's checks. A delivery only *wakes* the pollers of its repository; its
//! payload is never trusted as state, because the poll that follows is the source of truth.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// GitHub caps payloads at 25 MB; anything larger is not from GitHub.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// Checks `X-Hub-Signature-256` (`sha256=<hex>`) over the raw body, in constant time.
pub fn signature_is_valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The repository a delivery is about (`repository.full_name`), if the payload names one.
/// Only this one field is read; the rest of the payload is ignored.
pub fn repository_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Payload {
        repository: Option<Repo>,
    }
    #[derive(serde::Deserialize)]
    struct Repo {
        full_name: String,
    }
    serde_json::from_slice::<Payload>(body)
        .ok()?
        .repository
        .map(|r| r.full_name)
}

/// Remembers the last delivery ids, so that a redelivered webhook wakes nothing twice.
#[derive(Debug)]
pub struct Deliveries {
    capacity: usize,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Deliveries {
    pub fn new(capacity: usize) -> Self {
        Deliveries {
            capacity: capacity.max(1),
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// True the first time an id is seen.
    pub fn first_time(&self, id: &str) -> bool {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *guard;
        if set.contains(id) {
            return false;
        }
        if order.len() == self.capacity
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        set.insert(id.to_owned());
        order.push_back(id.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_documented_test_vector() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_is_valid(secret, body, Some(good)));
        let bad = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e18";
        assert!(!signature_is_valid(secret, body, Some(bad)));
        assert!(!signature_is_valid(secret, b"Hello, World?", Some(good)));
        assert!(!signature_is_valid(b"other", body, Some(good)));
        assert!(!signature_is_valid(secret, body, None));
        assert!(!signature_is_valid(secret, body, Some("sha1=abc")));
        assert!(!signature_is_valid(secret, body, Some("sha256=zz")));
    }

    #[test]
    fn the_repository_comes_from_every_real_payload() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/github-webhooks"
        );
        let mut checked = 0;
        for entry in
            std::fs::read_dir(dir).expect("shared/fixtures/github-webhooks beside the clone")
        {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let body = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let repo = repository_of(&body);
            assert!(
                repo.as_deref().is_some_and(|r| r.contains('/')),
                "{name}: {repo:?}"
            );
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} payloads");
        assert_eq!(repository_of(b"not json"), None);
        assert_eq!(repository_of(br#"{"zen":"x"}"#), None);
    }

    #[test]
    fn duplicate_deliveries_are_recognised_within_capacity() {
        let d = Deliveries::new(2);
        assert!(d.first_time("a"));
        assert!(!d.first_time("a"));
        assert!(d.first_time("b"));
        assert!(d.first_time("c"));
        assert!(d.first_time("a"), "forgotten once capacity is exceeded");
    }
}
