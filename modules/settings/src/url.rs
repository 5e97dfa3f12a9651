//! URL checks shared by the sections that name a remote API.

use crate::Problems;

/// Records a problem unless `url` is an http(s) URL with a host.
pub fn check_url(p: &mut Problems, origin: String, key: &str, url: &str) {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
        p.push(origin, Some(key), format!("{url:?} is not an http(s) URL"));
    }
}
