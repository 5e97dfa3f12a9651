//! The agent's tools (`../shared/CONTRACT.md` "Agent tools": names and arguments are contract):
//! their JSON schemas for the model, their arguments read strictly ([`Call::parse`]), whether
//! each writes ([`ToolName::access`]), and the executor trait [`Tools`].
//!
//! Everything a model sends is hostile (it may have read an attacker's issue): a wrong type, a
//! missing field, a huge string, a path that climbs out of the repository are [`ArgError`]s,
//! answered to the model as error results, never panics and never a call.
//!
//! Object safe with boxed futures (`Arc<dyn Tools>`), like `modules/builds/src/forge.rs`. The
//! daemon implements [`Tools`] over GitHub, the previews and the builds; tests use
//! [`FakeTools`], which records every call.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use productbuilder_llm::Tool;
use serde_json::{Value, json};

/// The marker every GitHub comment of the agent carries, so the Slack module does not mirror
/// it back into the thread (`modules/slack/src/decide.rs` `is_ours`).
pub const AGENT_MARKER: &str = "<!-- productbuilder:agent -->";

/// The longest issue title.
pub const MAX_TITLE_CHARS: usize = 256;
/// The longest issue or comment body, build prompt or close reason (GitHub's own limit is 65536).
pub const MAX_BODY_CHARS: usize = 20_000;
/// The longest search query.
pub const MAX_QUERY_CHARS: usize = 256;
/// The longest path or git ref.
pub const MAX_PATH_CHARS: usize = 512;
/// The most log lines asked for.
pub const MAX_TAIL_LINES: u64 = 500;

/// The future a [`Tools`] method returns.
pub type ToolFuture<'a> = Pin<Box<dyn Future<Output = Result<Output, ToolError>> + Send + 'a>>;

/// Whether a tool changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The contract's tools.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum ToolName {
    CreateIssue,
    Comment,
    CloseIssue,
    DelegateBuild,
    SearchIssues,
    GetIssue,
    GetPullRequest,
    ReadFile,
    PreviewStatus,
    PreviewLogs,
    BuildStatus,
}

impl ToolName {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn access(self) -> Access {
        match self {
            ToolName::CreateIssue
            | ToolName::Comment
            | ToolName::CloseIssue
            | ToolName::DelegateBuild => Access::Write,
            _ => Access::Read,
        }
    }

    /// The tool as the model sees it.
    pub fn tool(self) -> Tool {
        let number = json!({"type": "integer", "minimum": 1});
        let (description, properties, required): (&str, Value, &[&str]) = match self {
            ToolName::CreateIssue => (
                "Creates a GitHub issue in the thread's repository. Only when the person asked for it.",
                json!({"title": {"type": "string", "maxLength": MAX_TITLE_CHARS},
                       "body": {"type": "string", "maxLength": MAX_BODY_CHARS}}),
                &["title", "body"],
            ),
            ToolName::Comment => (
                "Posts a comment on an issue or pull request.",
                json!({"number": number, "body": {"type": "string", "maxLength": MAX_BODY_CHARS}}),
                &["number", "body"],
            ),
            ToolName::CloseIssue => (
                "Closes an issue.",
                json!({"number": number, "reason": {"type": "string"}}),
                &["number", "reason"],
            ),
            ToolName::DelegateBuild => (
                "Starts a build: a coding agent implements the issue and opens a pull request.",
                json!({"issue": number, "prompt": {"type": "string", "maxLength": MAX_BODY_CHARS}}),
                &["issue", "prompt"],
            ),
            ToolName::SearchIssues => (
                "Searches the repository's issues and pull requests by words of their titles.",
                json!({"query": {"type": "string", "maxLength": MAX_QUERY_CHARS}}),
                &["query"],
            ),
            ToolName::GetIssue => (
                "Reads an issue: title, state, body.",
                json!({"number": number}),
                &["number"],
            ),
            ToolName::GetPullRequest => (
                "Reads a pull request: title, state, branch, body.",
                json!({"number": number}),
                &["number"],
            ),
            ToolName::ReadFile => (
                "Reads a file of the repository (relative path), at a branch or commit if given.",
                json!({"path": {"type": "string", "maxLength": MAX_PATH_CHARS},
                       "ref": {"type": "string", "maxLength": MAX_PATH_CHARS}}),
                &["path"],
            ),
            ToolName::PreviewStatus => (
                "The preview of a pull request: state, URL, failure.",
                json!({"number": number}),
                &["number"],
            ),
            ToolName::PreviewLogs => (
                "The last lines of a pull request's preview logs.",
                json!({"number": number, "tail": {"type": "integer", "minimum": 1, "maximum": MAX_TAIL_LINES}}),
                &["number"],
            ),
            ToolName::BuildStatus => (
                "A build's state, by its id or by its issue.",
                json!({"id": number, "issue": number}),
                &[],
            ),
        };
        Tool {
            name: self.as_str().to_owned(),
            description: description.to_owned(),
            schema: json!({"type": "object", "properties": properties, "required": required}),
        }
    }
}

/// A tool call whose arguments were read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    CreateIssue {
        title: String,
        body: String,
    },
    Comment {
        number: u64,
        body: String,
    },
    CloseIssue {
        number: u64,
        reason: String,
    },
    DelegateBuild {
        issue: u64,
        prompt: String,
    },
    SearchIssues {
        query: String,
    },
    GetIssue {
        number: u64,
    },
    GetPullRequest {
        number: u64,
    },
    ReadFile {
        path: String,
        git_ref: Option<String>,
    },
    PreviewStatus {
        number: u64,
    },
    PreviewLogs {
        number: u64,
        tail: Option<u64>,
    },
    BuildStatus {
        id: Option<u64>,
        issue: Option<u64>,
    },
}

/// Arguments a tool cannot run with (told to the model as an error result).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("the arguments must be a JSON object")]
    NotAnObject,
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("`{field}` is too long ({chars} characters, at most {max})")]
    TooLong {
        field: &'static str,
        chars: usize,
        max: usize,
    },
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    #[error("`{field}` is not allowed: {why}")]
    Invalid {
        field: &'static str,
        why: &'static str,
    },
}

struct Args<'a>(&'a serde_json::Map<String, Value>);

impl Args<'_> {
    fn number_opt(&self, field: &'static str) -> Result<Option<u64>, ArgError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=u64::from(u32::MAX)).contains(&n) => Ok(Some(n)),
                _ => Err(ArgError::WrongType {
                    field,
                    expected: "a positive integer",
                }),
            },
        }
    }

    fn number(&self, field: &'static str) -> Result<u64, ArgError> {
        self.number_opt(field)?.ok_or(ArgError::Missing(field))
    }

    fn text_opt(&self, field: &'static str, max: usize) -> Result<Option<String>, ArgError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                let chars = s.chars().count();
                if chars > max {
                    Err(ArgError::TooLong { field, chars, max })
                } else if s.trim().is_empty() {
                    Err(ArgError::Empty(field))
                } else {
                    Ok(Some(s.clone()))
                }
            }
            Some(_) => Err(ArgError::WrongType {
                field,
                expected: "a string",
            }),
        }
    }

    fn text(&self, field: &'static str, max: usize) -> Result<String, ArgError> {
        self.text_opt(field, max)?.ok_or(ArgError::Missing(field))
    }
}

/// A path inside the repository: relative, no `..`, no backslash, no control character.
fn check_path(path: &str) -> Result<(), ArgError> {
    let why = if path.starts_with('/') {
        Some("it must be relative to the repository's root")
    } else if path.contains('\\') || path.chars().any(char::is_control) {
        Some("backslashes and control characters are not paths")
    } else if path.split('/').any(|s| s == ".." || s == ".") {
        Some("`.` and `..` segments are not allowed")
    } else if path.split('/').any(str::is_empty) {
        Some("empty segments are not allowed")
    } else {
        None
    };
    why.map_or(Ok(()), |why| Err(ArgError::Invalid { field: "path", why }))
}

/// A branch, tag or commit: git's ref characters only, no `..`.
fn check_ref(git_ref: &str) -> Result<(), ArgError> {
    let allowed = git_ref
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !allowed || git_ref.contains("..") || git_ref.starts_with(['/', '-']) {
        return Err(ArgError::Invalid {
            field: "ref",
            why: "a branch, tag or commit name (letters, digits, . _ - /)",
        });
    }
    Ok(())
}

impl Call {
    /// Reads the arguments of `name`.
    pub fn parse(name: ToolName, input: &Value) -> Result<Call, ArgError> {
        let object = input.as_object().ok_or(ArgError::NotAnObject)?;
        let a = Args(object);
        Ok(match name {
            ToolName::CreateIssue => Call::CreateIssue {
                title: a.text("title", MAX_TITLE_CHARS)?,
                body: a.text_opt("body", MAX_BODY_CHARS)?.unwrap_or_default(),
            },
            ToolName::Comment => Call::Comment {
                number: a.number("number")?,
                body: a.text("body", MAX_BODY_CHARS)?,
            },
            ToolName::CloseIssue => Call::CloseIssue {
                number: a.number("number")?,
                reason: a.text_opt("reason", MAX_BODY_CHARS)?.unwrap_or_default(),
            },
            ToolName::DelegateBuild => Call::DelegateBuild {
                issue: a.number("issue")?,
                prompt: a.text("prompt", MAX_BODY_CHARS)?,
            },
            ToolName::SearchIssues => Call::SearchIssues {
                query: a.text("query", MAX_QUERY_CHARS)?,
            },
            ToolName::GetIssue => Call::GetIssue {
                number: a.number("number")?,
            },
            ToolName::GetPullRequest => Call::GetPullRequest {
                number: a.number("number")?,
            },
            ToolName::ReadFile => {
                let path = a.text("path", MAX_PATH_CHARS)?;
                check_path(&path)?;
                let git_ref = a.text_opt("ref", MAX_PATH_CHARS)?;
                if let Some(r) = &git_ref {
                    check_ref(r)?;
                }
                Call::ReadFile { path, git_ref }
            }
            ToolName::PreviewStatus => Call::PreviewStatus {
                number: a.number("number")?,
            },
            ToolName::PreviewLogs => {
                let tail = a.number_opt("tail")?;
                if tail.is_some_and(|t| t > MAX_TAIL_LINES) {
                    return Err(ArgError::Invalid {
                        field: "tail",
                        why: "at most 500 lines",
                    });
                }
                Call::PreviewLogs {
                    number: a.number("number")?,
                    tail,
                }
            }
            ToolName::BuildStatus => {
                let (id, issue) = (a.number_opt("id")?, a.number_opt("issue")?);
                if id.is_none() && issue.is_none() {
                    return Err(ArgError::Missing("id or issue"));
                }
                Call::BuildStatus { id, issue }
            }
        })
    }

    pub fn name(&self) -> ToolName {
        match self {
            Call::CreateIssue { .. } => ToolName::CreateIssue,
            Call::Comment { .. } => ToolName::Comment,
            Call::CloseIssue { .. } => ToolName::CloseIssue,
            Call::DelegateBuild { .. } => ToolName::DelegateBuild,
            Call::SearchIssues { .. } => ToolName::SearchIssues,
            Call::GetIssue { .. } => ToolName::GetIssue,
            Call::GetPullRequest { .. } => ToolName::GetPullRequest,
            Call::ReadFile { .. } => ToolName::ReadFile,
            Call::PreviewStatus { .. } => ToolName::PreviewStatus,
            Call::PreviewLogs { .. } => ToolName::PreviewLogs,
            Call::BuildStatus { .. } => ToolName::BuildStatus,
        }
    }
}

/// A write that was done: what the reply may claim, and what the thread is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Created { number: u64, url: String },
    Commented { number: u64, url: String },
    Closed { number: u64 },
    BuildStarted { issue: u64, build: u64 },
}

impl Action {
    /// One plain line saying what was done.
    pub fn describe(&self) -> String {
        match self {
            Action::Created { number, url } => format!("created issue #{number} ({url})"),
            Action::Commented { number, url } => format!("commented on #{number} ({url})"),
            Action::Closed { number } => format!("closed #{number}"),
            Action::BuildStarted { issue, build } => {
                format!("started build {build} for #{issue}")
            }
        }
    }
}

/// What a tool answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// For the model (quoted as data by the run: it may hold anyone's text).
    pub text: String,
    /// The write it did, if any.
    pub action: Option<Action>,
}

impl Output {
    pub fn read(text: impl Into<String>) -> Output {
        Output {
            text: text.into(),
            action: None,
        }
    }

    pub fn wrote(text: impl Into<String>, action: Action) -> Output {
        Output {
            text: text.into(),
            action: Some(action),
        }
    }
}

/// A tool that failed (told to the model as an error result; never a token or a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("#{0} does not exist in this repository")]
    NotFound(u64),
    #[error("{0}")]
    Refused(String),
    #[error("{0}; nothing was changed, try again later")]
    Unavailable(String),
}

/// The tools over the real parts, bound to one repository.
pub trait Tools: Send + Sync {
    /// Runs a checked call for `repo` (`owner/name`).
    fn run<'a>(&'a self, repo: &'a str, call: &'a Call) -> ToolFuture<'a>;
}

/// `body` with the agent's marker, so the Slack module does not mirror the comment.
pub fn marked(body: &str) -> String {
    format!("{body}\n\n{AGENT_MARKER}")
}

/// An issue as the fake knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeIssue {
    pub title: String,
    pub body: String,
    pub open: bool,
}

#[derive(Debug, Default)]
struct FakeWorld {
    issues: BTreeMap<u64, FakeIssue>,
    calls: Vec<(String, Call)>,
    comments: Vec<(u64, String)>,
    builds: u64,
}

/// Tools over an in-memory repository, recording every call (tests).
#[derive(Debug, Default)]
pub struct FakeTools {
    world: Mutex<FakeWorld>,
}

impl FakeTools {
    pub fn new() -> FakeTools {
        FakeTools::default()
    }

    pub fn add_issue(&self, number: u64, title: &str, body: &str) {
        self.world().issues.insert(
            number,
            FakeIssue {
                title: title.into(),
                body: body.into(),
                open: true,
            },
        );
    }

    pub fn issue(&self, number: u64) -> Option<FakeIssue> {
        self.world().issues.get(&number).cloned()
    }

    /// Every call, in order, with its repository.
    pub fn calls(&self) -> Vec<(String, Call)> {
        self.world().calls.clone()
    }

    /// The comments posted, as GitHub would store them (marker included).
    pub fn comments(&self) -> Vec<(u64, String)> {
        self.world().comments.clone()
    }

    fn world(&self) -> std::sync::MutexGuard<'_, FakeWorld> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn answer(&self, repo: &str, call: &Call) -> Result<Output, ToolError> {
        let mut w = self.world();
        w.calls.push((repo.to_owned(), call.clone()));
        let url = |n: u64| format!("https://github.com/{repo}/issues/{n}");
        match call {
            Call::CreateIssue { title, body } => {
                let number = w.issues.keys().max().copied().unwrap_or(0) + 1;
                w.issues.insert(
                    number,
                    FakeIssue {
                        title: title.clone(),
                        body: body.clone(),
                        open: true,
                    },
                );
                Ok(Output::wrote(
                    format!("created #{number}: {}", url(number)),
                    Action::Created {
                        number,
                        url: url(number),
                    },
                ))
            }
            Call::Comment { number, body } => {
                if !w.issues.contains_key(number) {
                    return Err(ToolError::NotFound(*number));
                }
                w.comments.push((*number, marked(body)));
                let at = format!("{}#issuecomment-{}", url(*number), w.comments.len());
                Ok(Output::wrote(
                    format!("commented: {at}"),
                    Action::Commented {
                        number: *number,
                        url: at,
                    },
                ))
            }
            Call::CloseIssue { number, .. } => {
                let issue = w
                    .issues
                    .get_mut(number)
                    .ok_or(ToolError::NotFound(*number))?;
                issue.open = false;
                Ok(Output::wrote(
                    format!("closed #{number}"),
                    Action::Closed { number: *number },
                ))
            }
            Call::DelegateBuild { issue, .. } => {
                w.builds += 1;
                let build = w.builds;
                Ok(Output::wrote(
                    format!("build {build} queued for #{issue}"),
                    Action::BuildStarted {
                        issue: *issue,
                        build,
                    },
                ))
            }
            Call::GetIssue { number } | Call::GetPullRequest { number } => {
                let issue = w.issues.get(number).ok_or(ToolError::NotFound(*number))?;
                Ok(Output::read(format!(
                    "#{number} ({}): {}\n\n{}",
                    if issue.open { "open" } else { "closed" },
                    issue.title,
                    issue.body
                )))
            }
            Call::SearchIssues { query } => {
                let found: Vec<String> = w
                    .issues
                    .iter()
                    .filter(|(_, i)| i.title.to_lowercase().contains(&query.to_lowercase()))
                    .map(|(n, i)| format!("#{n} {}", i.title))
                    .collect();
                Ok(Output::read(found.join("\n")))
            }
            Call::ReadFile { path, .. } => Ok(Output::read(format!("(contents of {path})"))),
            Call::PreviewStatus { number } => Ok(Output::read(format!("#{number}: no preview"))),
            Call::PreviewLogs { .. } => Ok(Output::read("(no logs)")),
            Call::BuildStatus { .. } => Ok(Output::read("no build")),
        }
    }
}

impl Tools for FakeTools {
    fn run<'a>(&'a self, repo: &'a str, call: &'a Call) -> ToolFuture<'a> {
        Box::pin(async move { self.answer(repo, call) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    #[test]
    fn names_are_the_contracts() {
        let names: Vec<&str> = ToolName::VARIANTS.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "create_issue",
                "comment",
                "close_issue",
                "delegate_build",
                "search_issues",
                "get_issue",
                "get_pull_request",
                "read_file",
                "preview_status",
                "preview_logs",
                "build_status"
            ]
        );
        for t in ToolName::VARIANTS {
            assert_eq!(t.as_str().parse::<ToolName>().unwrap(), *t);
            let tool = t.tool();
            assert_eq!(tool.name, t.as_str());
            assert_eq!(tool.schema["type"], "object");
        }
        let writes: Vec<&str> = ToolName::VARIANTS
            .iter()
            .filter(|t| t.access() == Access::Write)
            .map(|t| t.as_str())
            .collect();
        assert_eq!(
            writes,
            ["create_issue", "comment", "close_issue", "delegate_build"]
        );
    }

    #[test]
    fn good_arguments_are_read() {
        let cases = [
            (
                ToolName::CreateIssue,
                json!({"title": "Cart total", "body": "wrong"}),
                Call::CreateIssue {
                    title: "Cart total".into(),
                    body: "wrong".into(),
                },
            ),
            (
                ToolName::ReadFile,
                json!({"path": "src/cart.rs", "ref": "feature/x-1"}),
                Call::ReadFile {
                    path: "src/cart.rs".into(),
                    git_ref: Some("feature/x-1".into()),
                },
            ),
            (
                ToolName::BuildStatus,
                json!({"issue": 12}),
                Call::BuildStatus {
                    id: None,
                    issue: Some(12),
                },
            ),
            (
                ToolName::PreviewLogs,
                json!({"number": 3}),
                Call::PreviewLogs {
                    number: 3,
                    tail: None,
                },
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(Call::parse(name, &input).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn hostile_arguments_are_errors_never_panics() {
        let huge = "x".repeat(MAX_BODY_CHARS + 1);
        let cases: Vec<(ToolName, Value, ArgError)> = vec![
            (ToolName::GetIssue, json!([1]), ArgError::NotAnObject),
            (ToolName::GetIssue, json!("7"), ArgError::NotAnObject),
            (ToolName::GetIssue, json!({}), ArgError::Missing("number")),
            (
                ToolName::GetIssue,
                json!({"number": "7"}),
                ArgError::WrongType {
                    field: "number",
                    expected: "a positive integer",
                },
            ),
            (
                ToolName::GetIssue,
                json!({"number": -1}),
                ArgError::WrongType {
                    field: "number",
                    expected: "a positive integer",
                },
            ),
            (
                ToolName::GetIssue,
                json!({"number": 1.5}),
                ArgError::WrongType {
                    field: "number",
                    expected: "a positive integer",
                },
            ),
            (
                ToolName::GetIssue,
                json!({"number": 0}),
                ArgError::WrongType {
                    field: "number",
                    expected: "a positive integer",
                },
            ),
            (
                ToolName::GetIssue,
                json!({"number": u64::MAX}),
                ArgError::WrongType {
                    field: "number",
                    expected: "a positive integer",
                },
            ),
            (
                ToolName::Comment,
                json!({"number": 1, "body": huge}),
                ArgError::TooLong {
                    field: "body",
                    chars: MAX_BODY_CHARS + 1,
                    max: MAX_BODY_CHARS,
                },
            ),
            (
                ToolName::CreateIssue,
                json!({"title": "  ", "body": "b"}),
                ArgError::Empty("title"),
            ),
            (
                ToolName::CreateIssue,
                json!({"title": {"a": 1}}),
                ArgError::WrongType {
                    field: "title",
                    expected: "a string",
                },
            ),
            (
                ToolName::BuildStatus,
                json!({}),
                ArgError::Missing("id or issue"),
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(Call::parse(name, &input), Err(want), "{name} {input}");
        }
    }

    #[test]
    fn read_file_paths_stay_inside_the_repository() {
        let bad_paths = [
            "../secrets",
            "a/../../etc/passwd",
            "/etc/passwd",
            "a\\..\\b",
            "./a",
            "a//b",
            "a/\u{0}b",
            "a/..",
        ];
        for path in bad_paths {
            assert!(
                matches!(
                    Call::parse(ToolName::ReadFile, &json!({"path": path})),
                    Err(ArgError::Invalid { field: "path", .. })
                ),
                "{path:?}"
            );
        }
        for git_ref in ["main..HEAD", "-x", "a b", "/abs", "main~1", "a;b"] {
            assert!(
                matches!(
                    Call::parse(
                        ToolName::ReadFile,
                        &json!({"path": "README.md", "ref": git_ref})
                    ),
                    Err(ArgError::Invalid { field: "ref", .. })
                ),
                "{git_ref:?}"
            );
        }
        assert!(Call::parse(ToolName::ReadFile, &json!({"path": ".github/x..y.yml"})).is_ok());
    }

    #[tokio::test]
    async fn the_fake_records_calls_and_marks_comments() {
        let tools = FakeTools::new();
        tools.add_issue(4, "Cart", "wrong");
        let out = tools
            .run(
                "o/r",
                &Call::Comment {
                    number: 4,
                    body: "hi".into(),
                },
            )
            .await
            .unwrap();
        assert!(matches!(
            out.action,
            Some(Action::Commented { number: 4, .. })
        ));
        assert!(tools.comments()[0].1.ends_with(AGENT_MARKER));
        assert_eq!(
            tools
                .run(
                    "o/r",
                    &Call::CloseIssue {
                        number: 9,
                        reason: String::new()
                    }
                )
                .await,
            Err(ToolError::NotFound(9))
        );
        assert_eq!(tools.calls().len(), 2);
    }
}
