//! `[builds]` as an operator writes it: each case is a TOML section and what resolution says.

use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Toml};
use productbuilder_settings::{Origins, Problems, from_figment};
use serde::Deserialize;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Top {
    builds: Option<RawBuilds>,
}

/// Resolves `toml` written as `productbuilder.toml` in `dir`; the problems as printed, with the
/// directory shown as `DIR`.
fn load(dir: &Path, toml: &str) -> Result<Option<BuildsConfig>, Vec<String>> {
    let file = dir.join("productbuilder.toml");
    std::fs::write(&file, toml).unwrap();
    let figment = Figment::from(Toml::file(&file));
    let shown = |problems: Vec<productbuilder_settings::Problem>| {
        problems
            .into_iter()
            .map(|p| p.to_string().replace(&dir.display().to_string(), "DIR"))
            .collect::<Vec<_>>()
    };
    let top: Top = figment
        .extract()
        .map_err(|e| shown(from_figment(e, &file.display().to_string())))?;
    let mut p = Problems::new();
    let config = resolve(&mut p, &Origins::new(&figment, &file), top.builds);
    if p.is_empty() {
        Ok(config)
    } else {
        Err(shown(p.into_vec()))
    }
}

const AGENT: &str = "agent_command = [\"claude\", \"-p\", \"{prompt}\"]\n";

#[test]
fn defaults_follow_the_issue_and_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load(dir.path(), "").unwrap().is_none(), "no section: off");
    let c = load(dir.path(), &format!("[builds]\n{AGENT}"))
        .unwrap()
        .unwrap();
    assert_eq!(c.agent_format, AgentFormat::ClaudeStreamJson);
    assert_eq!(c.max_duration, Duration::from_secs(1800));
    assert_eq!((c.max_turns, c.max_cost_usd), (None, None));
    assert_eq!(c.label, "productbuilder");
    assert_eq!(c.branch_prefix, "productbuilder/");
    assert_eq!(c.env, ["PATH"]);
    assert!(c.env_files.is_empty() && c.callback_secret.is_none());
    assert_eq!(
        (c.author_name.as_str(), c.author_email.as_str()),
        ("productbuilder", "productbuilder@users.noreply.github.com")
    );
    assert_eq!(c.max_concurrent, 1);
    assert_eq!(c.max_fix_attempts, 1);
}

#[test]
fn every_key_is_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cb.txt"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("key.txt"), "sk-ant-xyz\n").unwrap();
    std::fs::write(dir.path().join("id_ed25519"), "key").unwrap();
    let c = load(
        dir.path(),
        r#"[builds]
agent_command = ["opencode", "run", "--format", "json", "{prompt}"]
agent_format = "opencode-json"
max_duration = "10m"
max_turns = 40
max_cost_usd = 2.5
label = "build-me"
callback_secret_file = "cb.txt"
branch_prefix = "bot/"
env = ["PATH", "HOME"]
author_name = "Bot"
author_email = "bot@example.com"
signing_key_file = "id_ed25519"
max_concurrent = 3
max_fix_attempts = 0
[builds.env_files]
ANTHROPIC_API_KEY = "key.txt"
"#,
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.agent_format, AgentFormat::OpencodeJson);
    assert_eq!(c.max_duration, Duration::from_secs(600));
    assert_eq!((c.max_turns, c.max_cost_usd), (Some(40), Some(2.5)));
    assert_eq!(c.label, "build-me");
    assert_eq!(c.callback_secret.unwrap().expose(), "s3cret");
    assert_eq!(c.branch_prefix, "bot/");
    assert_eq!(c.env, ["PATH", "HOME"]);
    assert_eq!(c.env_files["ANTHROPIC_API_KEY"].expose(), "sk-ant-xyz");
    assert_eq!(c.author_name, "Bot");
    assert_eq!(c.signing_key_file, Some(dir.path().join("id_ed25519")));
    assert_eq!(c.max_concurrent, 3);
    assert_eq!(c.max_fix_attempts, 0, "0 disables the automatic fixes");
}

#[test]
fn the_prompt_is_one_argument_never_a_shell_word() {
    let c = BuildsConfig::new(vec![
        "agent".into(),
        "--prompt={prompt}".into(),
        "-v".into(),
    ]);
    let prompt = "x\"; rm -rf / #\n$(id) {prompt}";
    assert_eq!(
        c.argv(prompt),
        ["agent", &format!("--prompt={prompt}"), "-v"].map(String::from)
    );
}

#[test]
fn problems_name_the_key_and_what_to_write() {
    let cases: &[(&str, &str)] = &[
        (
            "[builds]\n",
            "key `builds.agent_command`: missing; [builds] needs the agent's argv",
        ),
        (
            "[builds]\nagent_command = []\n",
            "key `builds.agent_command`: missing",
        ),
        (
            "[builds]\nagent_command = [\"claude\", \"-p\"]\n",
            "key `builds.agent_command`: no element holds {prompt}",
        ),
        (
            "[builds]\nagent_command = [\"{prompt}\"]\n",
            "key `builds.agent_command`: the first element must name the agent's program",
        ),
        (
            &format!("[builds]\n{AGENT}agent_format = \"json\"\n"),
            "key `builds.agent_format`: unknown agent format `json`: use one of claude-stream-json, opencode-json, codex-json, text",
        ),
        (
            &format!("[builds]\n{AGENT}max_duration = \"soon\"\n"),
            "key `builds.max_duration`: \"soon\" is not a duration",
        ),
        (
            &format!("[builds]\n{AGENT}max_duration = 600\n"),
            "key `builds.max_duration`: 600 has no unit",
        ),
        (
            &format!("[builds]\n{AGENT}max_duration = \"0s\"\n"),
            "key `builds.max_duration`: must be longer than 0s",
        ),
        (
            &format!("[builds]\n{AGENT}max_turns = 0\n"),
            "key `builds.max_turns`: 0 is out of range; use 1 to 10000",
        ),
        (
            &format!("[builds]\n{AGENT}max_cost_usd = -1.0\n"),
            "key `builds.max_cost_usd`: -1 is not a positive number",
        ),
        (
            &format!("[builds]\n{AGENT}label = \"\"\n"),
            "key `builds.label`: must be a GitHub label name",
        ),
        (
            &format!("[builds]\n{AGENT}callback_secret = \"x\"\ncallback_secret_file = \"f\"\n"),
            "key `builds.callback_secret`: set either `builds.callback_secret` or `builds.callback_secret_file`, not both",
        ),
        (
            &format!("[builds]\n{AGENT}callback_secret = \" \"\n"),
            "key `builds.callback_secret`: is empty",
        ),
        (
            &format!("[builds]\n{AGENT}branch_prefix = \"-x/\"\n"),
            "key `builds.branch_prefix`: branch name `-x/issue-1` is refused",
        ),
        (
            &format!("[builds]\n{AGENT}branch_prefix = \"a..b/\"\n"),
            "key `builds.branch_prefix`: branch name `a..b/issue-1` is refused",
        ),
        (
            &format!("[builds]\n{AGENT}env = [\"PRODUCTBUILDER_GITHUB__TOKEN\"]\n"),
            "key `builds.env`: `PRODUCTBUILDER_GITHUB__TOKEN` is reserved",
        ),
        (
            &format!("[builds]\n{AGENT}env = [\"GIT_DIR\"]\n"),
            "key `builds.env`: `GIT_DIR` is reserved",
        ),
        (
            &format!("[builds]\n{AGENT}env = [\"A=B\"]\n"),
            "key `builds.env`: \"A=B\" is not an environment variable name",
        ),
        (
            &format!("[builds]\n{AGENT}[builds.env_files]\nKEY = \"missing.txt\"\n"),
            "key `builds.env_files.KEY`: cannot read secret file DIR/missing.txt",
        ),
        (
            &format!("[builds]\n{AGENT}author_email = \"nobody\"\n"),
            "key `builds.author_email`: must be an email address",
        ),
        (
            &format!("[builds]\n{AGENT}signing_key_file = \"nokey\"\n"),
            "key `builds.signing_key_file`: DIR/nokey is not a readable file",
        ),
        (
            &format!("[builds]\n{AGENT}max_concurrent = 0\n"),
            "key `builds.max_concurrent`: 0 is out of range; use 1 to 64",
        ),
        (
            &format!("[builds]\n{AGENT}max_fix_attempts = 11\n"),
            "key `builds.max_fix_attempts`: 11 is out of range; use 0 (no automatic fix) to 10",
        ),
        (
            &format!("[builds]\n{AGENT}max_fix_attempts = \"once\"\n"),
            "key `builds.max_fix_attempts`",
        ),
        (
            &format!("[builds]\n{AGENT}max_duraton = \"5m\"\n"),
            "key `builds.max_duraton`: unknown key; did you mean `max_duration`?",
        ),
        (
            &format!("[builds]\n{AGENT}callback_url = \"https://x\"\n"),
            "key `builds.callback_url`: unknown key",
        ),
    ];
    for (toml, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let problems = load(dir.path(), toml).unwrap_err();
        let want = format!("DIR/productbuilder.toml: {want}");
        assert!(
            problems.iter().any(|p| p.starts_with(&want)),
            "{toml}\nwanted: {want}\ngot: {problems:#?}"
        );
    }
}

#[test]
fn a_secret_is_in_no_problem() {
    let dir = tempfile::tempdir().unwrap();
    let problems = load(
        dir.path(),
        &format!("[builds]\n{AGENT}callback_secret = \"hunter2-secret\"\nmax_turns = 0\n"),
    )
    .unwrap_err();
    assert!(!problems.concat().contains("hunter2"), "{problems:?}");
}
