//! What a build is asked to do ([`BuildSpec`]) and what it did ([`BuildResult`]), with the JSON
//! names of the seeds (001-003) and issue 11.
//!
//! A spec arrives from the REST API, so it is hostile: [`BuildSpec::from_json`] caps the body,
//! refuses unknown fields, and validates every field against a bound, each error naming the field
//! (the API answers 422 with it). The prompt later becomes one argv element of the agent, so no
//! text may hold a NUL byte.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The largest request body [`BuildSpec::from_json`] reads.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// The largest prompt: generous for an issue with its comments, far below argv's limit.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;
pub const MAX_TEMPLATE_BYTES: usize = 128;
pub const MAX_VARIABLES: usize = 64;
pub const MAX_VARIABLE_NAME_BYTES: usize = 64;
pub const MAX_VARIABLE_VALUE_BYTES: usize = 4 * 1024;
pub const MAX_URL_BYTES: usize = 2048;
/// git's own practical bound on a ref name component is far larger; a branch name longer than
/// this is a mistake or an attack.
pub const MAX_BASE_BYTES: usize = 255;
/// What [`BuildResult::output`] keeps: the end of the agent's transcript.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// A build request: seeds 001-003 (`prompt` .. `callback_url`) plus issue 11's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildSpec {
    pub prompt: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub auto_commit: bool,
    #[serde(default = "yes")]
    pub auto_push: bool,
    #[serde(default)]
    pub callback_url: Option<String>,
    /// The issue the build implements (`Closes #n` in the pull request).
    #[serde(default)]
    pub issue: Option<u64>,
    /// The branch to start from; `None`: the repository's default branch.
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default = "yes")]
    pub open_pr: bool,
    #[serde(default)]
    pub draft: bool,
    /// More commits on this pull request's branch (a `/productbuilder implement` or `continue`
    /// on a pull request) instead of a new branch and pull request.
    #[serde(default)]
    pub pull_request: Option<u64>,
}

fn yes() -> bool {
    true
}

impl BuildSpec {
    /// A spec with `prompt` and every default.
    pub fn new(prompt: impl Into<String>) -> BuildSpec {
        BuildSpec {
            prompt: prompt.into(),
            template: None,
            variables: BTreeMap::new(),
            auto_commit: true,
            auto_push: true,
            callback_url: None,
            issue: None,
            base: None,
            open_pr: true,
            draft: false,
            pull_request: None,
        }
    }

    /// Parses and validates a request body from the API.
    pub fn from_json(body: &[u8]) -> Result<BuildSpec, SpecError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(SpecError::BodyTooLarge {
                bytes: body.len(),
                limit: MAX_BODY_BYTES,
            });
        }
        let raw: RawSpec =
            serde_json::from_slice(body).map_err(|e| SpecError::Json(e.to_string()))?;
        let spec = BuildSpec {
            prompt: raw.prompt.ok_or(SpecError::Missing { field: "prompt" })?,
            template: raw.template,
            variables: raw.variables.unwrap_or_default(),
            auto_commit: raw.auto_commit.unwrap_or(true),
            auto_push: raw.auto_push.unwrap_or(true),
            callback_url: raw.callback_url,
            issue: raw.issue,
            base: raw.base,
            open_pr: raw.open_pr.unwrap_or(true),
            draft: raw.draft.unwrap_or(false),
            pull_request: raw.pull_request,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every bound; the first violation, naming its field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.prompt.trim().is_empty() {
            return Err(SpecError::Empty { field: "prompt" });
        }
        text("prompt", &self.prompt, MAX_PROMPT_BYTES)?;
        if let Some(template) = &self.template {
            text("template", template, MAX_TEMPLATE_BYTES)?;
            if template.is_empty()
                || template.contains("..")
                || template.starts_with('/')
                || !template.chars().all(is_name_char)
            {
                return Err(SpecError::Invalid {
                    field: "template",
                    why: "a relative name of letters, digits, '-', '_', '.' and '/', without '..'",
                });
            }
        }
        if self.variables.len() > MAX_VARIABLES {
            return Err(SpecError::TooMany {
                field: "variables",
                count: self.variables.len(),
                limit: MAX_VARIABLES,
            });
        }
        for (name, value) in &self.variables {
            text("variables (a name)", name, MAX_VARIABLE_NAME_BYTES)?;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(SpecError::Invalid {
                    field: "variables",
                    why: "names are letters, digits, '-' and '_'",
                });
            }
            text("variables (a value)", value, MAX_VARIABLE_VALUE_BYTES)?;
        }
        if let Some(url) = &self.callback_url {
            text("callback_url", url, MAX_URL_BYTES)?;
            check_callback_url(url)?;
        }
        if self.issue == Some(0) {
            return Err(SpecError::Invalid {
                field: "issue",
                why: "issue numbers start at 1",
            });
        }
        if let Some(base) = &self.base {
            text("base", base, MAX_BASE_BYTES)?;
            check_branch(base)?;
        }
        Ok(())
    }
}

/// The body as sent, every field optional, so that a missing one is named by us rather than
/// as serde's position in the text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    prompt: Option<String>,
    template: Option<String>,
    variables: Option<BTreeMap<String, String>>,
    auto_commit: Option<bool>,
    auto_push: Option<bool>,
    callback_url: Option<String>,
    issue: Option<u64>,
    base: Option<String>,
    open_pr: Option<bool>,
    draft: Option<bool>,
    pull_request: Option<u64>,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn text(field: &'static str, value: &str, limit: usize) -> Result<(), SpecError> {
    if value.len() > limit {
        return Err(SpecError::TooLong {
            field,
            bytes: value.len(),
            limit,
        });
    }
    if value.contains('\0') {
        return Err(SpecError::Invalid {
            field,
            why: "NUL bytes are not allowed",
        });
    }
    Ok(())
}

fn check_callback_url(url: &str) -> Result<(), SpecError> {
    let invalid = |why| SpecError::Invalid {
        field: "callback_url",
        why,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|_| invalid("not a URL (expected http:// or https://host/...)"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("only http and https URLs are called back")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| invalid("the URL has no host"))?;
    if authority.host().is_empty() {
        return Err(invalid("the URL has no host"));
    }
    // Credentials in the URL would be logged with it; the callback is signed instead.
    if authority.as_str().contains('@') {
        return Err(invalid("user info (user:password@) is not allowed"));
    }
    Ok(())
}

/// A conservative subset of `git check-ref-format --branch`: enough to refuse options (`-x`),
/// traversal (`..`), and what git itself refuses.
fn check_branch(base: &str) -> Result<(), SpecError> {
    let invalid = |why| SpecError::Invalid { field: "base", why };
    if base.is_empty() || base.starts_with('-') || base.starts_with('/') || base.ends_with('/') {
        return Err(invalid(
            "a branch name, not empty, not starting with '-' or '/'",
        ));
    }
    if base.contains("..") || base.contains("//") || base.contains("@{") || base.ends_with(".lock")
    {
        return Err(invalid("not a valid git branch name"));
    }
    if !base.chars().all(is_name_char) {
        return Err(invalid(
            "branch names here are letters, digits, '-', '_', '.' and '/'",
        ));
    }
    Ok(())
}

/// Why a spec was refused; each names the field, for the API's 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("the request body is {bytes} bytes; the limit is {limit}")]
    BodyTooLarge { bytes: usize, limit: usize },
    #[error("the request body is not a build spec: {0}")]
    Json(String),
    #[error("`{field}` is required")]
    Missing { field: &'static str },
    #[error("`{field}` is empty")]
    Empty { field: &'static str },
    #[error("`{field}` is {bytes} bytes; the limit is {limit}")]
    TooLong {
        field: &'static str,
        bytes: usize,
        limit: usize,
    },
    #[error("`{field}` has {count} entries; the limit is {limit}")]
    TooMany {
        field: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("`{field}` is invalid: {why}")]
    Invalid {
        field: &'static str,
        why: &'static str,
    },
}

impl SpecError {
    /// The field at fault, when there is one (`None` for a body that is not JSON at all).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            SpecError::BodyTooLarge { .. } | SpecError::Json(_) => None,
            SpecError::Missing { field }
            | SpecError::Empty { field }
            | SpecError::TooLong { field, .. }
            | SpecError::TooMany { field, .. }
            | SpecError::Invalid { field, .. } => Some(field),
        }
    }
}

/// What a build did: seeds 001-003 (`success` .. `artifacts`) plus issue 11's fields, which stay
/// `null` when the agent or the step did not report them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildResult {
    pub success: bool,
    /// The end of the agent's transcript, at most [`MAX_OUTPUT_BYTES`]
    /// (see [`BuildResult::bounded_output`]).
    pub output: String,
    pub error: Option<String>,
    pub commit_sha: Option<String>,
    pub files_changed: Vec<String>,
    pub duration_ms: u64,
    pub artifacts: Vec<String>,
    pub branch: Option<String>,
    pub pr_number: Option<u64>,
    pub pr_url: Option<String>,
    pub preview_url: Option<String>,
    pub cost_usd: Option<f64>,
    pub turns: Option<u32>,
}

impl BuildResult {
    /// The last [`MAX_OUTPUT_BYTES`] of `output`, cut at a character boundary: the end of a
    /// transcript says how it ended.
    pub fn bounded_output(output: &str) -> String {
        if output.len() <= MAX_OUTPUT_BYTES {
            return output.to_owned();
        }
        let mut start = output.len() - MAX_OUTPUT_BYTES;
        while !output.is_char_boundary(start) {
            start += 1;
        }
        output[start..].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<BuildSpec, SpecError> {
        BuildSpec::from_json(json.as_bytes())
    }

    #[test]
    fn defaults_follow_the_seeds_and_the_issue() {
        let spec = parse(r#"{"prompt":"add a footer"}"#).unwrap();
        assert_eq!(spec, BuildSpec::new("add a footer"));
        assert!(spec.auto_commit && spec.auto_push && spec.open_pr && !spec.draft);
    }

    #[test]
    fn every_field_is_read_by_its_json_name() {
        let spec = parse(
            r#"{"prompt":"p","template":"astro-landing","variables":{"title":"Hi"},
                "auto_commit":false,"auto_push":false,"callback_url":"https://bot.example/cb",
                "issue":7,"base":"release/1.2","open_pr":false,"draft":true}"#,
        )
        .unwrap();
        assert_eq!(spec.template.as_deref(), Some("astro-landing"));
        assert_eq!(spec.variables["title"], "Hi");
        assert!(!spec.auto_commit && !spec.auto_push && !spec.open_pr && spec.draft);
        assert_eq!(spec.callback_url.as_deref(), Some("https://bot.example/cb"));
        assert_eq!(
            (spec.issue, spec.base.as_deref()),
            (Some(7), Some("release/1.2"))
        );
        // And it round-trips through the JSON the queue stores.
        let again: BuildSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn a_missing_prompt_is_named() {
        let err = parse(r#"{"template":"x"}"#).unwrap_err();
        assert_eq!(err, SpecError::Missing { field: "prompt" });
        assert_eq!(err.to_string(), "`prompt` is required");
        assert_eq!(
            parse(r#"{"prompt":"  "}"#).unwrap_err().field(),
            Some("prompt")
        );
    }

    #[test]
    fn a_prompt_of_a_megabyte_is_refused_naming_the_field() {
        let prompt = "a".repeat(1024 * 1024);
        let spec = BuildSpec::new(prompt.clone());
        let err = spec.validate().unwrap_err();
        assert_eq!(err.field(), Some("prompt"));
        assert!(
            err.to_string()
                .contains("`prompt` is 1048576 bytes; the limit is 65536"),
            "{err}"
        );
        // Through the API the body itself is over the cap, refused before parsing.
        let body = serde_json::to_vec(&spec).unwrap();
        assert!(matches!(
            BuildSpec::from_json(&body),
            Err(SpecError::BodyTooLarge { .. })
        ));
        // Just under the body cap, the prompt bound speaks.
        let body = format!(r#"{{"prompt":"{}"}}"#, "b".repeat(200 * 1024));
        assert_eq!(
            BuildSpec::from_json(body.as_bytes()).unwrap_err().field(),
            Some("prompt")
        );
    }

    #[test]
    fn callback_urls_are_only_http_or_https_with_a_host() {
        for ok in ["http://127.0.0.1:9000/cb", "https://bot.example/hook?x=1"] {
            assert!(
                parse(&format!(r#"{{"prompt":"p","callback_url":"{ok}"}}"#)).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "file:///etc/passwd",
            "ftp://host/x",
            "javascript:alert(1)",
            "gopher://h/",
            "/relative",
            "https://user:pw@host/x",
            "not a url",
        ] {
            let err = parse(&format!(r#"{{"prompt":"p","callback_url":"{bad}"}}"#)).unwrap_err();
            assert_eq!(err.field(), Some("callback_url"), "{bad}: {err}");
        }
    }

    #[test]
    fn variables_are_bounded_in_count_names_and_values() {
        let mut spec = BuildSpec::new("p");
        for i in 0..=MAX_VARIABLES {
            spec.variables.insert(format!("v{i}"), "x".into());
        }
        assert!(matches!(
            spec.validate(),
            Err(SpecError::TooMany {
                field: "variables",
                ..
            })
        ));
        let mut spec = BuildSpec::new("p");
        spec.variables
            .insert("ok".into(), "x".repeat(MAX_VARIABLE_VALUE_BYTES + 1));
        assert!(matches!(spec.validate(), Err(SpecError::TooLong { .. })));
        let mut spec = BuildSpec::new("p");
        spec.variables.insert("bad name".into(), "x".into());
        assert_eq!(spec.validate().unwrap_err().field(), Some("variables"));
        let err = parse(r#"{"prompt":"p","variables":{"a":1}}"#).unwrap_err();
        assert!(matches!(err, SpecError::Json(_)), "{err}");
    }

    #[test]
    fn hostile_text_is_refused() {
        let err = parse("{\"prompt\":\"a\\u0000b\"}").unwrap_err();
        assert_eq!(err.field(), Some("prompt"));
        for base in ["-upload-pack=x", "a..b", "", "x.lock", "a b"] {
            let mut spec = BuildSpec::new("p");
            spec.base = Some(base.into());
            assert_eq!(
                spec.validate().unwrap_err().field(),
                Some("base"),
                "{base:?}"
            );
        }
        let mut spec = BuildSpec::new("p");
        spec.template = Some("web/astro-landing".into());
        assert!(spec.validate().is_ok());
        for template in ["../../etc", "/etc", "a;rm -rf"] {
            spec.template = Some(template.into());
            assert_eq!(
                spec.validate().unwrap_err().field(),
                Some("template"),
                "{template}"
            );
        }
        assert_eq!(
            parse(r#"{"prompt":"p","issue":0}"#).unwrap_err().field(),
            Some("issue")
        );
        let err = parse(r#"{"prompt":"p","promt":"typo"}"#).unwrap_err();
        assert!(err.to_string().contains("promt"), "{err}");
    }

    #[test]
    fn the_output_keeps_the_end_at_a_char_boundary() {
        let long = format!("{}é{}", "x".repeat(MAX_OUTPUT_BYTES), "end");
        let kept = BuildResult::bounded_output(&long);
        assert!(kept.len() <= MAX_OUTPUT_BYTES && kept.ends_with("end"));
        assert_eq!(BuildResult::bounded_output("short"), "short");
    }

    #[test]
    fn a_result_has_the_seeds_json_names() {
        let value = serde_json::to_value(BuildResult::default()).unwrap();
        for key in [
            "success",
            "output",
            "error",
            "commit_sha",
            "files_changed",
            "duration_ms",
            "artifacts",
            "branch",
            "pr_number",
            "pr_url",
            "preview_url",
            "cost_usd",
            "turns",
        ] {
            assert!(value.get(key).is_some(), "{key}");
        }
    }
}
