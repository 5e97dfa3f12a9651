//! Config errors exactly as users see them. Environment overrides are tested through the real
//! binary in `tests/cli.rs`, because changing this process's environment would race other tests.

use super::*;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(main: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tenants")).unwrap();
        std::fs::write(dir.path().join("productbuilder.toml"), main).unwrap();
        Setup { dir }
    }

    fn tenant(self, file: &str, text: &str) -> Self {
        std::fs::write(self.dir.path().join("tenants").join(file), text).unwrap();
        self
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn main(&self) -> PathBuf {
        self.dir.path().join("productbuilder.toml")
    }

    fn load(&self) -> Result<Config, ConfigError> {
        // A prefix no environment has, so the process environment cannot leak in.
        load_with_env(
            &self.main(),
            Env::prefixed("PRODUCTBUILDER_UNIT_TEST_NOTHING_"),
        )
    }

    /// The error text with the temporary directory replaced by `DIR`.
    fn error(&self) -> String {
        let err = self.load().expect_err("the config should be refused");
        err.to_string()
            .replace(&self.dir.path().display().to_string(), "DIR")
    }
}

const MINIMAL: &str = r#"
state_dir = "state"
[github]
token = "ghp_secret_value"
"#;

#[test]
fn the_example_config_parses() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/productbuilder.example.toml");
    let config = load_with_env(&file, Env::prefixed("PRODUCTBUILDER_UNIT_TEST_NOTHING_"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.tenants.is_empty());
    assert!(config.slack.is_some() && config.llm.is_some() && config.builds.is_some());
    let repos: Vec<String> = config.tenants.iter().map(TenantConfig::repo).collect();
    assert!(repos.contains(&"acme/shop".to_owned()), "{repos:?}");
}

#[test]
fn a_minimal_config_gets_the_documented_defaults() {
    let setup = Setup::new(MINIMAL).tenant("shop.toml", "repo = \"acme/shop\"\n");
    let config = setup.load().unwrap();
    assert_eq!(config.state_dir, setup.dir.path().join("state"));
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:8091");
    assert_eq!(config.github.api_url, "https://api.github.com");
    assert_eq!(config.github.poll_interval, Duration::from_secs(30));
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(
        config.preview.settings.compose_command,
        ["docker", "compose"]
    );
    assert_eq!(config.scheduler.shutdown_grace, Duration::from_secs(30));
    assert!(config.http.api_token.is_none() && config.http.read_token.is_none());
    assert!(config.slack.is_none() && config.llm.is_none() && config.builds.is_none());
    let tenant = &config.tenants[0];
    assert_eq!(
        (tenant.owner.as_str(), tenant.name.as_str()),
        ("acme", "shop")
    );
    assert_eq!(tenant.poll_interval, Duration::from_secs(30));
    assert!(config.preview.enabled("acme/shop"));
}

#[test]
fn an_unknown_key_is_named_with_its_file_and_a_suggestion() {
    let setup =
        Setup::new("state_dir = \"s\"\n[github]\ntoken = \"t\"\npoll_intervall = \"30s\"\n")
            .tenant("shop.toml", "repo = \"acme/shop\"\n");
    let error = setup.error();
    assert!(
        error.starts_with(
            "DIR/productbuilder.toml: key `github.poll_intervall`: unknown key; did you mean `poll_interval`?"
        ),
        "{error}"
    );
}

#[test]
fn an_unknown_key_in_a_tenant_file_names_that_file() {
    let setup = Setup::new(MINIMAL).tenant("shop.toml", "repo = \"acme/shop\"\npreviewz = false\n");
    let error = setup.error();
    assert!(
        error.starts_with(
            "DIR/tenants/shop.toml: key `previewz`: unknown key; did you mean `previews`?"
        ),
        "{error}"
    );
}

#[test]
fn a_bad_duration_names_the_key_and_shows_the_expected_form() {
    let setup = Setup::new(MINIMAL).tenant(
        "shop.toml",
        "repo = \"acme/shop\"\npoll_interval = \"5 parsecs\"\n",
    );
    let error = setup.error();
    assert!(
        error.starts_with(
            "DIR/tenants/shop.toml: key `poll_interval`: \"5 parsecs\" is not a duration"
        ),
        "{error}"
    );
    assert!(error.contains("\"30s\", \"5m\""), "{error}");
}

#[test]
fn a_tenant_without_repo_says_what_to_write() {
    let setup = Setup::new(MINIMAL).tenant("shop.toml", "poll_interval = \"15s\"\n");
    assert_eq!(
        setup.error(),
        "DIR/tenants/shop.toml: key `repo`: missing; name the repository, for example repo = \"acme/shop\""
    );
}

#[test]
fn malformed_toml_names_the_file_and_line() {
    let setup = Setup::new(MINIMAL).tenant("shop.toml", "repo = \"acme/shop\"\nprevious = [\n");
    let error = setup.error();
    assert!(error.starts_with("DIR/tenants/shop.toml"), "{error}");
    assert!(
        error.contains("line 2") || error.contains("line 3"),
        "{error}"
    );
}

#[test]
fn a_repo_that_is_not_owner_slash_name_is_refused() {
    for bad in [
        "shop",
        "acme/",
        "/shop",
        "acme/shop/extra",
        "ac me/shop",
        "acme/..",
    ] {
        let setup = Setup::new(MINIMAL).tenant("shop.toml", &format!("repo = {bad:?}\n"));
        let error = setup.error();
        assert_eq!(
            error,
            format!(
                "DIR/tenants/shop.toml: key `repo`: {bad:?} is not owner/name, for example \"acme/shop\""
            ),
        );
    }
}

#[test]
fn the_same_repository_twice_is_refused_naming_both_files() {
    let setup = Setup::new(MINIMAL)
        .tenant("a.toml", "repo = \"acme/shop\"\n")
        .tenant("b.toml", "repo = \"Acme/Shop\"\n");
    assert_eq!(
        setup.error(),
        "DIR/tenants/b.toml: key `repo`: Acme/Shop is already configured in DIR/tenants/a.toml; keep one file per repository"
    );
}

#[test]
fn no_tenant_at_all_is_an_error() {
    let setup = Setup::new(MINIMAL);
    let error = setup.error();
    assert!(
        error.starts_with("DIR/productbuilder.toml: key `tenants_dir`: no tenant in DIR/tenants"),
        "{error}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let setup = Setup::new("[github]\npoll_interval = \"soon\"\n[http]\nlisten = \"everywhere\"\n")
        .tenant("shop.toml", "repo = \"acme\"\n");
    let error = setup.error();
    let lines: Vec<&str> = error.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("key `state_dir`: missing")),
        "{error}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("key `github.token`: missing")),
        "{error}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("key `github.poll_interval`")),
        "{error}"
    );
    assert!(
        lines.iter().any(|l| l.contains("key `http.listen`")),
        "{error}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tenants/shop.toml: key `repo`")),
        "{error}"
    );
}

#[test]
fn a_missing_main_file_says_how_to_point_at_one() {
    let err = load_with_env(
        Path::new("/nonexistent/pb.toml"),
        Env::prefixed("PRODUCTBUILDER_UNIT_TEST_NOTHING_"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("/nonexistent/pb.toml: cannot read the config file"),
        "{err}"
    );
    assert!(err.contains("PRODUCTBUILDER_CONFIG"), "{err}");
}

#[test]
fn secrets_come_from_files_and_never_print() {
    let setup = Setup::new(
        "state_dir = \"s\"\n[github]\ntoken_file = \"token.txt\"\nwebhook_secret = \"hook-secret\"\n[http]\nread_token_file = \"read.txt\"\n",
    )
    .tenant("shop.toml", "repo = \"acme/shop\"\n");
    setup.file("token.txt", "ghp_from_file\n");
    setup.file("read.txt", "read-from-file\n");
    let config = setup.load().unwrap();
    match &config.github.auth {
        GithubAuth::Token(t) => assert_eq!(t.expose(), "ghp_from_file"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        config.http.read_token.as_ref().map(Secret::expose),
        Some("read-from-file")
    );
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("ghp_from_file")
            && !debug.contains("hook-secret")
            && !debug.contains("read-from-file"),
        "{debug}"
    );
    assert!(debug.contains("[redacted]"));
}

#[test]
fn a_secret_given_twice_or_unreadable_is_refused() {
    let setup = Setup::new(
        "state_dir = \"s\"\n[github]\ntoken = \"a\"\ntoken_file = \"t\"\n[http]\napi_token_file = \"missing.txt\"\n",
    )
    .tenant("shop.toml", "repo = \"acme/shop\"\n");
    let error = setup.error();
    assert!(
        error.contains(
            "key `github.token`: set either `github.token` or `github.token_file`, not both"
        ),
        "{error}"
    );
    assert!(
        error.contains("key `http.api_token_file`: cannot read secret file DIR/missing.txt"),
        "{error}"
    );
    assert!(!error.contains("\"a\""), "{error}");
    // The token is set (twice): a "missing" line would contradict the one above.
    assert!(!error.contains("missing;"), "{error}");
}

#[test]
fn an_empty_secret_is_refused_naming_the_file_or_the_key() {
    let setup = Setup::new(
        "state_dir = \"s\"\n[github]\ntoken_file = \"token.txt\"\nwebhook_secret = \"  \"\n[slack]\nbot_token_file = \"bot.txt\"\n",
    )
    .tenant(
        "shop.toml",
        "repo = \"acme/shop\"\n[preview.env.web]\nAPI_KEY_file = \"key.txt\"\n",
    );
    setup.file("token.txt", "\n");
    setup.file("bot.txt", "");
    setup.file("tenants/key.txt", " \n");
    let error = setup.error();
    for want in [
        "DIR/productbuilder.toml: key `github.token_file`: secret file DIR/token.txt is empty; write the secret into it",
        "DIR/productbuilder.toml: key `github.webhook_secret`: is empty",
        "DIR/productbuilder.toml: key `slack.bot_token_file`: secret file DIR/bot.txt is empty",
        "DIR/tenants/shop.toml: key `preview.env.web.API_KEY_file`: secret file DIR/tenants/key.txt is empty",
    ] {
        assert!(error.contains(want), "want {want:?} in:\n{error}");
    }
    // Set but empty is one problem, not also "missing".
    assert!(!error.contains("missing;"), "{error}");
}

#[test]
fn a_bare_number_for_a_duration_says_to_write_a_duration_string() {
    // serde stops at a file's first error, so one main-file case at a time.
    let cases = [
        (
            "[github]\npoll_interval = 15\n",
            "key `github.poll_interval`: 15 has no unit; write it as a duration string like \"15s\"",
        ),
        (
            "[github]\nrequest_timeout = 10\n",
            "key `github.request_timeout`: 10 has no unit; write it as a duration string like \"10s\"",
        ),
        (
            "[preview]\nttl = 3600\n",
            "key `preview.ttl`: 3600 has no unit; write it as a duration string like \"3600s\"",
        ),
        (
            "[builds]\nmax_duration = 600\n",
            "key `builds.max_duration`: 600 has no unit",
        ),
        (
            "[scheduler]\nrun_timeout = 2.5\n",
            "key `scheduler.run_timeout`: 2.5 has no unit; write it as a duration string like \"2.5s\"",
        ),
        (
            "[scheduler]\nshutdown_grace = true\n",
            "key `scheduler.shutdown_grace`: expected a duration string like \"30s\"",
        ),
    ];
    for (table, want) in cases {
        let main = format!("state_dir = \"s\"\n{table}");
        let main = if table.starts_with("[github]") {
            main.replace("[github]\n", "[github]\ntoken = \"t\"\n")
        } else {
            format!("{main}[github]\ntoken = \"t\"\n")
        };
        let setup = Setup::new(&main).tenant("shop.toml", "repo = \"acme/shop\"\n");
        let error = setup.error();
        assert!(
            error.starts_with(&format!("DIR/productbuilder.toml: {want}")),
            "want {want:?} in:\n{error}"
        );
    }
    let setup =
        Setup::new(MINIMAL).tenant("shop.toml", "repo = \"acme/shop\"\npoll_interval = 60\n");
    assert_eq!(
        setup.error(),
        "DIR/tenants/shop.toml: key `poll_interval`: 60 has no unit; write it as a duration string like \"60s\""
    );
}

#[test]
fn a_preview_domain_must_be_a_bare_host_name() {
    let cases = [
        (
            "https://previews.example.com/",
            "\"https://previews.example.com/\" is not a host name (no scheme, path or port); write only the host name: domain = \"previews.example.com\"",
        ),
        (
            "previews.example.com:8443",
            "write only the host name: domain = \"previews.example.com\"",
        ),
        (
            "example.com/previews",
            "write only the host name: domain = \"example.com\"",
        ),
        (
            "-bad-.example",
            "write only the host name, for example domain = \"preview.example.com\"",
        ),
        ("", "\"\" is not a host name"),
    ];
    for (domain, want) in cases {
        let setup = Setup::new(&format!("{MINIMAL}[preview]\ndomain = {domain:?}\n"))
            .tenant("shop.toml", "repo = \"acme/shop\"\n");
        let error = setup.error();
        assert!(
            error.starts_with("DIR/productbuilder.toml: key `preview.domain`: ")
                && error.contains(want),
            "{domain:?}: want {want:?} in:\n{error}"
        );
    }
    for good in [
        "preview.localhost",
        "pr.example.com",
        "localhost",
        "xn--bcher-kva.example",
    ] {
        let setup = Setup::new(&format!("{MINIMAL}[preview]\ndomain = {good:?}\n"))
            .tenant("shop.toml", "repo = \"acme/shop\"\n");
        setup.load().unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

#[test]
fn a_broken_main_file_still_reports_the_tenant_files_problems() {
    // An unknown key, then a TOML syntax error: figment cannot extract the main file either way.
    for main in [
        "state_dir = \"s\"\n[github]\ntoken = \"t\"\ntokn = \"x\"\n",
        "state_dir = \"s\"\n[github\ntoken = \"t\"\n",
    ] {
        let setup = Setup::new(main)
            .tenant("shop.toml", "repo = \"acme/shop\"\npreviewz = false\n")
            .tenant("blog.toml", "repo = \"acme\"\n");
        let error = setup.error();
        assert!(error.starts_with("DIR/productbuilder.toml: "), "{error}");
        for want in [
            "DIR/tenants/shop.toml: key `previewz`: unknown key",
            "DIR/tenants/blog.toml: key `repo`: \"acme\" is not owner/name",
        ] {
            assert!(error.contains(want), "want {want:?} in:\n{error}");
        }
    }
    // The tenants directory named in a broken main file is the one read.
    let setup = Setup::new(
        "state_dir = \"s\"\ntenants_dir = \"repos\"\nbogus = 1\n[github]\ntoken = \"t\"\n",
    )
    .tenant("ignored.toml", "repo = \"acme\"\n");
    std::fs::create_dir(setup.dir.path().join("repos")).unwrap();
    setup.file("repos/shop.toml", "repo = \"acme/shop\"\ncpus = 2\n");
    let error = setup.error();
    assert!(
        error.contains("DIR/repos/shop.toml: key `cpus`: unknown key"),
        "{error}"
    );
    assert!(!error.contains("ignored.toml"), "{error}");
}

#[test]
fn github_app_auth_reads_the_private_key() {
    let setup = Setup::new(
        "state_dir = \"s\"\n[github]\napp_id = 123\ninstallation_id = \"456\"\nprivate_key_file = \"key.pem\"\n",
    )
    .tenant("shop.toml", "repo = \"acme/shop\"\n");
    setup.file(
        "key.pem",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n",
    );
    match setup.load().unwrap().github.auth {
        GithubAuth::App {
            app_id,
            installation_id,
            private_key,
        } => {
            assert_eq!((app_id, installation_id), (123, Some(456)));
            assert!(private_key.expose().contains("BEGIN RSA PRIVATE KEY"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn url_template_placeholders_are_checked() {
    let setup = Setup::new(
        "state_dir = \"s\"\n[github]\ntoken = \"t\"\n[preview]\nurl_template = \"https://{branch}.{domain}\"\n",
    )
    .tenant("shop.toml", "repo = \"acme/shop\"\n");
    let error = setup.error();
    assert!(error.contains("unknown placeholder {branch}"), "{error}");
    assert!(error.contains("must contain {number}"), "{error}");
}

#[test]
fn enumerations_list_their_choices() {
    let setup = Setup::new("state_dir = \"s\"\n[github]\ntoken = \"t\"\n[log]\nformat = \"xml\"\n")
        .tenant("shop.toml", "repo = \"acme/shop\"\n");
    let error = setup.error();
    assert!(
        error.starts_with(
            "DIR/productbuilder.toml: key `log.format`: \"xml\" is not one of: json, pretty"
        ),
        "{error}"
    );
}

#[test]
fn openaicompat_needs_a_base_url() {
    let setup = Setup::new(
        "state_dir = \"s\"\n[github]\ntoken = \"t\"\n[llm]\nprovider = \"openaicompat\"\nmodel = \"m\"\n",
    )
    .tenant("shop.toml", "repo = \"acme/shop\"\n");
    assert!(
        setup.error().contains("key `llm.base_url`: missing"),
        "{}",
        setup.error()
    );
}

#[test]
fn tenant_preview_settings_parse_and_are_checked() {
    let setup = Setup::new(MINIMAL).tenant(
        "shop.toml",
        "repo = \"acme/shop\"\n[preview]\nallow_forks = true\ndrafts = true\nfork_label = \"safe-to-preview\"\nrequire_label = true\nallow = [\"cap_add\"]\ncpus = 2.5\nmemory = \"2g\"\n",
    );
    let config = setup.load().unwrap();
    let p = &config.preview.tenants["acme/shop"].rules;
    assert!(p.allow_forks && p.drafts && p.require_label);
    assert_eq!(p.fork_label, "safe-to-preview");
    assert_eq!(
        p.policy
            .allowed
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>(),
        ["cap_add"]
    );
    assert_eq!((p.cpus, p.memory.as_deref()), (Some(2.5), Some("2g")));
    assert_eq!(config.preview.settings.max_builds, 2);
    assert_eq!(
        config.preview.settings.ttl,
        Duration::from_secs(7 * 24 * 3600)
    );

    let bad = Setup::new(MINIMAL).tenant(
        "shop.toml",
        "repo = \"acme/shop\"\n[preview]\nallow = [\"root\"]\ncpus = 0\nmemory = \"lots\"\nfork = true\n",
    );
    let error = bad.error();
    assert!(error.contains("key `preview.fork`: unknown key"), "{error}");
    let bad = Setup::new(MINIMAL).tenant(
        "shop.toml",
        "repo = \"acme/shop\"\n[preview]\nallow = [\"root\"]\ncpus = 0\nmemory = \"lots\"\n",
    );
    let error = bad.error();
    assert!(
        error.contains(
            "key `preview.allow`: \"root\" is not a policy rule; use: privileged, host_namespace"
        ),
        "{error}"
    );
    assert!(
        error.contains("key `preview.cpus`: 0 is not a CPU count"),
        "{error}"
    );
    assert!(
        error.contains("key `preview.memory`: \"lots\" is not a memory size"),
        "{error}"
    );
}

#[test]
fn tenant_env_gives_values_and_file_secrets_to_named_services() {
    let setup = Setup::new(MINIMAL).tenant(
        "shop.toml",
        r#"repo = "acme/shop"
[preview]
secrets_for_forks = true
[preview.env.web]
DATABASE_URL = "postgres://db/shop"
API_KEY_file = "shop-api-key"
EMPTY = ""
[preview.env."worker.1"]
_QUEUE = "jobs"
"#,
    );
    setup.file("tenants/shop-api-key", "sk-from-file\n");
    let config = setup.load().unwrap_or_else(|e| panic!("{e}"));
    let p = &config.preview.tenants["acme/shop"].rules;
    assert!(p.secrets_for_forks);
    let got: Vec<(&str, &str, &str, bool)> = p
        .env
        .iter()
        .map(|v| {
            (
                v.service.as_str(),
                v.name.as_str(),
                v.value.expose(),
                v.secret,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("web", "API_KEY", "sk-from-file", true),
            ("web", "DATABASE_URL", "postgres://db/shop", false),
            ("web", "EMPTY", "", false),
            ("worker.1", "_QUEUE", "jobs", false),
        ]
    );
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("sk-from-file") && !debug.contains("postgres://db/shop"),
        "{debug}"
    );

    // Without the keys: no variables, and secrets stay away from forks.
    let plain = Setup::new(MINIMAL).tenant("shop.toml", "repo = \"acme/shop\"\n");
    let p = &plain.load().unwrap().preview.tenants["acme/shop"].rules;
    assert!(p.env.is_empty() && !p.secrets_for_forks);
}

#[test]
fn tenant_env_problems_name_the_key_and_never_the_value() {
    let cases: &[(&str, &str)] = &[
        (
            "[preview.env.\"-web\"]\nA = \"hidden-1\"\n",
            "key `preview.env.-web`: \"-web\" is not a Compose service name",
        ),
        (
            "[preview.env.\"web app\"]\nA = \"hidden-1\"\n",
            "key `preview.env.\"web app\"`: \"web app\" is not a Compose service name",
        ),
        (
            "[preview.env]\nDATABASE_URL = \"hidden-2\"\n",
            "key `preview.env.DATABASE_URL`: must be a table named after a Compose service; write variables under a table named after the Compose service, for example [preview.env.web]",
        ),
        (
            "[preview]\nenv = \"hidden-3\"\n",
            "key `preview.env`: must be a table;",
        ),
        (
            "[preview.env.web]\n1PASSWORD = \"hidden-4\"\n",
            "key `preview.env.web.1PASSWORD`: \"1PASSWORD\" is not an environment variable name",
        ),
        (
            "[preview.env.web]\n\"A-B\" = \"hidden-5\"\n",
            "key `preview.env.web.A-B`: \"A-B\" is not an environment variable name",
        ),
        (
            "[preview.env.web]\n\"A B\" = \"hidden-5\"\n",
            "key `preview.env.web.\"A B\"`: \"A B\" is not an environment variable name",
        ),
        (
            "[preview.env.web]\nBASE_URL = \"hidden-6\"\n",
            "key `preview.env.web.BASE_URL`: `BASE_URL` is reserved",
        ),
        (
            "[preview.env.web]\nPRODUCTBUILDER_X = \"hidden-7\"\n",
            "key `preview.env.web.PRODUCTBUILDER_X`: `PRODUCTBUILDER_X` is reserved",
        ),
        (
            "[preview.env.web]\nPIN = 12345678\n",
            "key `preview.env.web.PIN`: must be a string; quote it",
        ),
        (
            "[preview.env.web]\nKEY = \"hidden-9\"\nKEY_file = \"key.txt\"\n",
            "key `preview.env.web.KEY_file`: set either `KEY` or `KEY_file`, not both",
        ),
        (
            "[preview.env.web]\nKEY_file = \"missing-secret\"\n",
            "key `preview.env.web.KEY_file`: cannot read secret file DIR/tenants/missing-secret",
        ),
        (
            "[preview.env.web]\nKEY_file = \"binary\"\n",
            "key `preview.env.web.KEY_file`: secret file DIR/tenants/binary is not UTF-8 text",
        ),
        (
            "[preview.env.web]\nKEY_file = \"huge\"\n",
            "key `preview.env.web.KEY_file`: secret file DIR/tenants/huge is larger than 64 KiB",
        ),
        (
            "[preview.env.web]\nKEY_file = \"nul\"\n",
            "key `preview.env.web.KEY_file`: contains a NUL byte",
        ),
        (
            "[preview.env.web]\n_file = \"key.txt\"\n",
            "key `preview.env.web._file`: \"\" is not an environment variable name",
        ),
        (
            "[preview]\nsecrets_for_forks = \"yes\"\n",
            "key `preview.secrets_for_forks`: expected a boolean",
        ),
    ];
    for (table, want) in cases {
        let setup =
            Setup::new(MINIMAL).tenant("shop.toml", &format!("repo = \"acme/shop\"\n{table}"));
        setup.file("tenants/key.txt", "hidden-key\n");
        setup.file("tenants/nul", "hidden\0nul");
        std::fs::write(setup.dir.path().join("tenants/binary"), b"\xff\xfehidden").unwrap();
        setup.file("tenants/huge", &"h".repeat(64 * 1024 + 1));
        let error = setup.error();
        assert!(
            error.contains(&format!("DIR/tenants/shop.toml: {want}")),
            "for\n{table}\nwanted …{want}\ngot {error}"
        );
        assert!(
            !error.contains("hidden") && !error.contains("12345678"),
            "{error}"
        );
    }
}

#[test]
fn docker_config_must_be_a_directory() {
    let setup = Setup::new(&format!("{MINIMAL}[preview]\ndocker_config = \"docker\"\n"))
        .tenant("shop.toml", "repo = \"acme/shop\"\n");
    let error = setup.error();
    assert!(
        error.contains("key `preview.docker_config`: cannot read the directory DIR/docker"),
        "{error}"
    );
    setup.file("docker", "not a directory");
    let error = setup.error();
    assert!(
        error.contains("key `preview.docker_config`: DIR/docker is not a directory"),
        "{error}"
    );
    std::fs::remove_file(setup.dir.path().join("docker")).unwrap();
    std::fs::create_dir(setup.dir.path().join("docker")).unwrap();
    let config = setup.load().unwrap();
    assert_eq!(
        config.preview.settings.docker_config.as_deref(),
        Some(setup.dir.path().join("docker").as_path())
    );
    let unset = Setup::new(MINIMAL).tenant("shop.toml", "repo = \"acme/shop\"\n");
    assert_eq!(unset.load().unwrap().preview.settings.docker_config, None);
}

#[test]
fn slack_gets_its_defaults_and_each_tenant_its_channel() {
    let setup = Setup::new(&format!("{MINIMAL}[slack]\nbot_token = \"xoxb-1\"\n"))
        .tenant(
            "shop.toml",
            "repo = \"acme/shop\"\nslack_channel = \"C0123\"\n",
        )
        .tenant("web.toml", "repo = \"acme/web\"\n");
    let config = setup.load().unwrap();
    let slack = config.slack.expect("[slack] resolves");
    assert_eq!(slack.api_url, "https://slack.com/api");
    assert_eq!(slack.history_requests_per_minute, 50);
    assert_eq!(slack.history_page_size, 100);
    assert_eq!(slack.backfill, None);
    assert!(slack.app_token.is_none());
    assert_eq!(
        config.slack_channels.into_iter().collect::<Vec<_>>(),
        [("acme/shop".to_owned(), "C0123".to_owned())]
    );
}

#[test]
fn slack_limits_and_backfill_are_read_and_checked() {
    let setup = Setup::new(&format!(
        "{MINIMAL}[slack]\nbot_token = \"xoxb-1\"\nhistory_requests_per_minute = 1\nhistory_page_size = 15\nbackfill = \"7d\"\n"
    ))
    .tenant("shop.toml", "repo = \"acme/shop\"\n");
    let slack = setup.load().unwrap().slack.unwrap();
    assert_eq!(
        (slack.history_requests_per_minute, slack.history_page_size),
        (1, 15)
    );
    assert_eq!(slack.backfill, Some(Duration::from_secs(7 * 86400)));

    let setup = Setup::new(&format!(
        "{MINIMAL}[slack]\nbot_token = \"xoxb-1\"\nhistory_page_size = 0\nbackfill = \"soon\"\n"
    ))
    .tenant(
        "shop.toml",
        "repo = \"acme/shop\"\nslack_channel = \"#shop\"\n",
    );
    let error = setup.error();
    for want in [
        "DIR/productbuilder.toml: key `slack.history_page_size`: 0 is out of range; use 1 to 1000",
        "DIR/productbuilder.toml: key `slack.backfill`: \"soon\" is not a duration",
        "DIR/tenants/shop.toml: key `slack_channel`: \"#shop\" is not a channel id",
    ] {
        assert!(error.contains(want), "want {want:?} in:\n{error}");
    }
}

#[test]
fn slack_without_a_bot_token_is_refused_naming_the_key() {
    let setup = Setup::new(&format!("{MINIMAL}[slack]\napp_token = \"xapp-1\"\n"))
        .tenant("shop.toml", "repo = \"acme/shop\"\n");
    assert!(
        setup.error().contains(
            "key `slack.bot_token`: missing; [slack] needs bot_token (or bot_token_file)"
        ),
        "{}",
        setup.error()
    );
}

#[test]
fn a_tenants_slack_writers_are_user_ids() {
    let setup = Setup::new(MINIMAL).tenant(
        "shop.toml",
        "repo = \"acme/shop\"\nslack_channel = \"C0123\"\n[slack]\nwriters = [\"U0123\"]\n",
    );
    let config = setup.load().unwrap();
    assert_eq!(config.slack_writers["acme/shop"], ["U0123"]);
    let setup = Setup::new(MINIMAL).tenant(
        "shop.toml",
        "repo = \"acme/shop\"\n[slack]\nwriters = [\"@alice\"]\n",
    );
    assert!(
        setup.error().contains(
            "DIR/tenants/shop.toml: key `slack.writers`: \"@alice\" is not a Slack user id"
        ),
        "{}",
        setup.error()
    );
}
