//! The token, as git gets it: an `http.<origin>/.extraheader` in git's environment
//! (`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`, git ≥ 2.31), so that it is in no
//! URL, `.git/config`, argv or output (research: git-browser-scaleout.md §1, verified on git 2.39
//! and 2.47). The header is scoped to the clone URL's origin: git sends it to no other host.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::GitError;

/// A token for one origin. `Debug` never shows the token.
#[derive(Clone)]
pub struct Credentials {
    origin: String,
    token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("origin", &self.origin)
            .field("token", &"[hidden]")
            .finish()
    }
}

impl Credentials {
    /// Credentials for the origin of `clone_url` (as the API returns it: `https://host/o/r.git`).
    /// The URL must be `http` or `https` and carry no user or password.
    pub fn for_url(clone_url: &str, token: impl Into<String>) -> Result<Credentials, GitError> {
        Ok(Credentials {
            origin: origin(clone_url)?,
            token: token.into(),
        })
    }

    /// `scheme://host[:port]/`: the key under which git matches the header.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The configuration key git reads the header from.
    pub(crate) fn config_key(&self) -> String {
        format!("http.{}.extraheader", self.origin)
    }

    /// The header's value, as actions/checkout writes it.
    pub(crate) fn header(&self) -> String {
        format!("AUTHORIZATION: basic {}", self.basic())
    }

    /// `base64("x-access-token:" + token)`: what travels, and so what is redacted too.
    pub(crate) fn basic(&self) -> String {
        BASE64.encode(format!("x-access-token:{}", self.token))
    }

    /// The strings that must never appear in captured output.
    pub(crate) fn secrets(&self) -> [String; 2] {
        [self.token.clone(), self.basic()]
    }
}

/// `scheme://authority/` of an `http(s)` URL without credentials in it. The URL is not repeated in
/// the error: it might hold a token.
pub(crate) fn origin(url: &str) -> Result<String, GitError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or(GitError::Url("it is not an absolute URL"))?;
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return Err(GitError::Url(
            "only http and https URLs are cloned with a token",
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(GitError::Url(
            "it carries credentials; the token is given to git through its environment",
        ));
    }
    if authority.is_empty()
        || !authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    {
        return Err(GitError::Url(
            "its host is empty or has unexpected characters",
        ));
    }
    Ok(format!(
        "{}://{}/",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_of_clone_urls() {
        let table: &[(&str, Option<&str>)] = &[
            ("https://github.com/o/r.git", Some("https://github.com/")),
            ("HTTPS://GitHub.com/o/r", Some("https://github.com/")),
            (
                "http://127.0.0.1:8080/o/r.git",
                Some("http://127.0.0.1:8080/"),
            ),
            (
                "https://ghe.example.com:8443",
                Some("https://ghe.example.com:8443/"),
            ),
            ("http://[::1]:9/o/r.git", Some("http://[::1]:9/")),
            ("https://x-access-token:t@github.com/o/r.git", None),
            ("https://@github.com/o/r.git", None),
            ("git@github.com:o/r.git", None),
            ("ssh://git@github.com/o/r.git", None),
            ("file:///srv/r.git", None),
            ("https:///o/r.git", None),
            ("https://host name/o/r.git", None),
            ("-uhttps://github.com/o/r", None),
        ];
        for (url, want) in table {
            assert_eq!(origin(url).ok().as_deref(), *want, "{url}");
        }
    }

    #[test]
    fn the_header_is_basic_x_access_token_and_debug_hides_it() {
        let credentials = Credentials::for_url("https://github.com/o/r.git", "ghs_SECRET").unwrap();
        assert_eq!(
            credentials.config_key(),
            "http.https://github.com/.extraheader"
        );
        // base64("x-access-token:ghs_SECRET")
        assert_eq!(
            credentials.header(),
            "AUTHORIZATION: basic eC1hY2Nlc3MtdG9rZW46Z2hzX1NFQ1JFVA=="
        );
        let shown = format!("{credentials:?}");
        assert!(
            !shown.contains("ghs_SECRET") && !shown.contains("eC1hY2Nlc3Mt"),
            "{shown}"
        );
    }

    #[test]
    fn an_error_does_not_repeat_the_url() {
        let err = origin("https://x-access-token:ghs_SECRET@github.com/o/r").unwrap_err();
        assert!(!err.to_string().contains("ghs_SECRET"), "{err}");
    }
}
