//! Table tests per format. The lines are written from the shapes the research notes document
//! (/work/shared/research/llm-and-agents.md): each table says which section and source.

use super::*;

fn read(format: AgentFormat, lines: &[&str]) -> (Vec<Progress>, Outcome) {
    let mut reader = Reader::new(format);
    let mut progress = Vec::new();
    for line in lines {
        progress.extend(reader.feed_line(line.as_bytes()));
    }
    let (rest, outcome) = reader.finish();
    progress.extend(rest);
    (progress, outcome)
}

fn texts(progress: &[Progress]) -> Vec<(ProgressKind, &str)> {
    progress.iter().map(|p| (p.kind, p.text.as_str())).collect()
}

// Claude Code stream-json, §2 "stream-json event schema": the init line as documented, the
// assistant/user/result lines as captured in uspark-hq/uspark spec/claude-code-output.md.
const CLAUDE_INIT: &str = r#"{"type":"system","subtype":"init","cwd":"/work/checkout","session_id":"e8889acf-5473-49e2-bd81-4896717df7c7","tools":["Read","Edit","Bash"],"mcp_servers":[],"model":"claude-sonnet-4-5","permissionMode":"acceptEdits","slash_commands":[],"apiKeySource":"ANTHROPIC_API_KEY","output_style":"default","uuid":"0b1c"}"#;
const CLAUDE_TEXT: &str = r#"{"type":"assistant","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"thinking","thinking":"…"},{"type":"text","text":"I'll add the comment.\nThen run the tests."}],"stop_reason":null,"usage":{"input_tokens":6}},"parent_tool_use_id":null,"session_id":"e8889acf-5473-49e2-bd81-4896717df7c7","uuid":"1"}"#;
const CLAUDE_EDIT: &str = r##"{"type":"assistant","message":{"id":"msg_01L4KGYxCvrNk3LeK75sDLvo","type":"message","role":"assistant","model":"claude-opus-4-1-20250805","content":[{"type":"tool_use","id":"toolu_01HgD157dhSct5BJqj6p75ua","name":"Edit","input":{"file_path":"/workspaces/uspark6/turbo/apps/cli/test-file.txt","old_string":"This is a test file for Claude to modify.","new_string":"# Test file comment\nThis is a test file for Claude to modify."}}]}}"##;
const CLAUDE_TOOL_OK: &str = r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_01HgD157dhSct5BJqj6p75ua","type":"tool_result","content":"The file /workspaces/uspark6/turbo/apps/cli/test-file.txt has been updated."}]},"parent_tool_use_id":null,"session_id":"e8889acf-5473-49e2-bd81-4896717df7c7","uuid":"a00e2d39-cd12-491d-99e6-ab596822af3b"}"#;
const CLAUDE_TOOL_ERR: &str = r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_02","type":"tool_result","content":"Exit code 101\ntest failed","is_error":true}]},"parent_tool_use_id":null,"session_id":"s","uuid":"u"}"#;
const CLAUDE_SUCCESS: &str = r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":18319,"duration_api_ms":21018,"num_turns":6,"result":"Done.","session_id":"e8889acf-5473-49e2-bd81-4896717df7c7","total_cost_usd":0.19243785000000002,"usage":{"input_tokens":6,"cache_creation_input_tokens":212,"cache_read_input_tokens":16827,"output_tokens":5,"server_tool_use":{"web_search_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":212}},"permission_denials":[],"uuid":"58d12213-b549-4d1b-9945-1a93a24f93f9"}"#;
// Digital-Process-Tools/claude-remember#98 (CLI 2.1.177, exit 1), as quoted in §2.
const CLAUDE_MAX_TURNS: &str = r#"{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":2,"errors":["Reached maximum number of turns (1)"]}"#;
const CLAUDE_MAX_BUDGET: &str = r#"{"type":"result","subtype":"error_max_budget_usd","is_error":true,"num_turns":14,"total_cost_usd":5.0123,"session_id":"s2"}"#;
// anthropics/claude-code#79500 (§2): an API failure reported as success with is_error, exit 0.
const CLAUDE_API_ERROR: &str = r#"{"type":"result","subtype":"success","is_error":true,"num_turns":1,"result":"API Error: 529 {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}","total_cost_usd":0}"#;
const CLAUDE_UNKNOWN: &str =
    r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed"}}"#;

#[test]
fn claude_stream_json() {
    let (progress, outcome) = read(
        AgentFormat::ClaudeStreamJson,
        &[
            CLAUDE_INIT,
            CLAUDE_UNKNOWN,
            CLAUDE_TEXT,
            CLAUDE_EDIT,
            CLAUDE_TOOL_OK,
            CLAUDE_TOOL_ERR,
            CLAUDE_SUCCESS,
        ],
    );
    assert_eq!(
        texts(&progress),
        [
            (ProgressKind::Started, "started (claude-sonnet-4-5)"),
            (
                ProgressKind::Text,
                "I'll add the comment. Then run the tests."
            ),
            (
                ProgressKind::Tool,
                "Edit: /workspaces/uspark6/turbo/apps/cli/test-file.txt"
            ),
            (ProgressKind::ToolFailed, "Exit code 101 test failed"),
        ]
    );
    assert_eq!(outcome.verdict, Verdict::Success);
    assert_eq!(outcome.turns, Some(6));
    // serde_json parses without `float_roundtrip`: the last bit of the printed cost may differ.
    assert_eq!(outcome.cost_usd, Some(0.19243785));
    assert_eq!(
        outcome.session_id.as_deref(),
        Some("e8889acf-5473-49e2-bd81-4896717df7c7")
    );
    assert_eq!(outcome.summary.as_deref(), Some("Done."));
    assert_eq!(
        (outcome.lines, outcome.lines_cut, outcome.lines_ignored),
        (7, 0, 0)
    );
}

#[test]
fn claude_results_are_judged_from_the_result_line() {
    let table: &[(&str, Verdict, Option<u32>, Option<f64>)] = &[
        (CLAUDE_SUCCESS, Verdict::Success, Some(6), Some(0.19243785)),
        (
            CLAUDE_MAX_TURNS,
            Verdict::Failed {
                reason: FailReason::MaxTurns,
                detail: "Reached maximum number of turns (1)".into(),
            },
            Some(2),
            None,
        ),
        (
            CLAUDE_MAX_BUDGET,
            Verdict::Failed {
                reason: FailReason::MaxBudget,
                detail: "error_max_budget_usd".into(),
            },
            Some(14),
            Some(5.0123),
        ),
        (
            CLAUDE_API_ERROR,
            Verdict::Failed {
                reason: FailReason::Error,
                detail: r#"API Error: 529 {"type":"error","error":{"type":"overloaded_error"}}"#
                    .into(),
            },
            Some(1),
            Some(0.0),
        ),
        (
            r#"{"type":"result","subtype":"error_during_execution","is_error":true,"num_turns":"three"}"#,
            Verdict::Failed {
                reason: FailReason::Error,
                detail: "error_during_execution".into(),
            },
            None,
            None,
        ),
        (
            r#"{"type":"result","is_error":false,"total_cost_usd":-1}"#,
            Verdict::Failed {
                reason: FailReason::Error,
                detail: "the result line has no subtype".into(),
            },
            None,
            None,
        ),
    ];
    for (line, verdict, turns, cost) in table {
        let (_, outcome) = read(AgentFormat::ClaudeStreamJson, &[CLAUDE_INIT, line]);
        assert_eq!(&outcome.verdict, verdict, "{line}");
        assert_eq!(&outcome.turns, turns, "{line}");
        assert_eq!(&outcome.cost_usd, cost, "{line}");
    }
}

#[test]
fn no_result_line_is_a_crash() {
    let (progress, outcome) = read(
        AgentFormat::ClaudeStreamJson,
        &[CLAUDE_INIT, CLAUDE_TEXT, CLAUDE_EDIT],
    );
    assert_eq!(progress.len(), 3);
    assert_eq!(outcome.verdict, Verdict::Crashed);
    assert_eq!(outcome.cost_usd, None);
    // Cut mid-line (killed while printing the result): still a crash.
    let mut reader = Reader::new(AgentFormat::ClaudeStreamJson);
    reader.feed(CLAUDE_INIT.as_bytes());
    reader.feed(b"\n");
    reader.feed(&CLAUDE_SUCCESS.as_bytes()[..100]);
    let (_, outcome) = reader.finish();
    assert_eq!(outcome.verdict, Verdict::Crashed);
    assert_eq!((outcome.lines, outcome.lines_ignored), (2, 1));
}

#[test]
fn hostile_lines_are_counted_and_skipped() {
    let hostile: &[&[u8]] = &[
        b"",
        b"not json at all",
        b"\xff\xfe\x00garbage\x1b[31m",
        b"[1,2,3]",
        b"\"a string\"",
        b"{\"type\":\"assistant\",\"message\":{\"content\":\"not an array\"}}",
        b"{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"tool_use\",\"name\":42}]}}",
        b"{\"type\":\"user\",\"message\":null}",
        b"{\"type\":17}",
        b"{\"type\":\"result\"",
    ];
    let mut deep = "[".repeat(10_000).into_bytes();
    deep.extend(b"]".repeat(10_000));
    for format in AgentFormat::ALL {
        let mut reader = Reader::new(format);
        let mut progress = Vec::new();
        for line in hostile.iter().copied().chain([deep.as_slice()]) {
            progress.extend(reader.feed_line(line));
        }
        let (_, outcome) = reader.finish();
        assert_eq!(outcome.lines, 11, "{format}");
        for p in &progress {
            assert!(!p.text.chars().any(char::is_control), "{format}: {p:?}");
            assert!(p.text.chars().count() <= PROGRESS_MAX_CHARS + 1, "{format}");
        }
        if format == AgentFormat::Text {
            assert_eq!(outcome.verdict, Verdict::Unreported);
            assert_eq!(outcome.lines_ignored, 0);
        } else {
            assert_eq!(outcome.verdict, Verdict::Crashed, "{format}");
            // Not JSON objects: five lines and the deep one. The blank line is not counted, the
            // four objects of the wrong shape are read (and yield nothing usable).
            assert_eq!(outcome.lines_ignored, 6, "{format}");
        }
    }
}

#[test]
fn a_huge_line_is_cut_and_counted_never_buffered_whole() {
    let cap = 1024;
    let mut reader = Reader::with_line_cap(AgentFormat::ClaudeStreamJson, cap);
    reader.feed(CLAUDE_INIT.as_bytes());
    reader.feed(b"\n");
    // 10 MB without a newline, in chunks, then the real result.
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..160 {
        assert!(reader.feed(&chunk).is_empty());
        assert!(reader.pending.len() <= cap);
    }
    reader.feed(b"\n");
    reader.feed(CLAUDE_SUCCESS.as_bytes());
    let (_, outcome) = reader.finish();
    assert_eq!(outcome.verdict, Verdict::Success);
    assert_eq!(
        (outcome.lines, outcome.lines_cut, outcome.lines_ignored),
        (3, 1, 1)
    );

    // A result line over the cap is lost: the run cannot be judged a success.
    let mut reader = Reader::with_line_cap(AgentFormat::ClaudeStreamJson, 100);
    reader.feed_line(CLAUDE_SUCCESS.as_bytes());
    let (_, outcome) = reader.finish();
    assert_eq!(outcome.verdict, Verdict::Crashed);
    assert_eq!(outcome.lines_cut, 1);
}

#[test]
fn chunks_split_anywhere_read_as_whole_lines() {
    let all = [CLAUDE_INIT, CLAUDE_EDIT, CLAUDE_SUCCESS].join("\r\n");
    let (whole_progress, whole) = read(
        AgentFormat::ClaudeStreamJson,
        &[CLAUDE_INIT, CLAUDE_EDIT, CLAUDE_SUCCESS],
    );
    for size in [1, 7, 100, 4096] {
        let mut reader = Reader::new(AgentFormat::ClaudeStreamJson);
        let mut progress = Vec::new();
        for chunk in all.as_bytes().chunks(size) {
            progress.extend(reader.feed(chunk));
        }
        let (rest, outcome) = reader.finish();
        progress.extend(rest);
        assert_eq!(progress, whole_progress, "chunks of {size}");
        assert_eq!(outcome, whole, "chunks of {size}");
    }
}

// OpenCode `run --format json`, §3: the step_finish line is the OpenCode 1.18.31 fixture quoted
// there; text, tool_use, error and done follow the fields listed there (run.ts).
const OPENCODE_START: &str = r#"{"type":"step_start","timestamp":1,"sessionID":"ses_A","part":{"id":"p1","sessionID":"ses_A","messageID":"m1","type":"step-start","snapshot":"4b825dc"}}"#;
const OPENCODE_TOOL: &str = r#"{"type":"tool_use","timestamp":2,"sessionID":"ses_A","part":{"id":"p2","sessionID":"ses_A","messageID":"m1","type":"tool","callID":"c1","tool":"edit","state":{"status":"completed","input":{"filePath":"/work/app/src/index.html","oldString":"a","newString":"b"},"output":"","title":"app/src/index.html","metadata":{},"time":{"start":1,"end":2}}}}"#;
const OPENCODE_TOOL_ERR: &str = r#"{"type":"tool_use","timestamp":2,"sessionID":"ses_A","part":{"id":"p2b","type":"tool","tool":"bash","state":{"status":"error","input":{"command":"npm test"},"error":"exit 1"}}}"#;
const OPENCODE_STEP_TOOLS: &str = r#"{"type":"step_finish","timestamp":3,"sessionID":"ses_A","part":{"id":"p3","reason":"tool-calls","sessionID":"ses_A","type":"step-finish","tokens":{"total":100,"input":90,"output":10,"reasoning":0,"cache":{"write":0,"read":0}},"cost":0.0125}}"#;
const OPENCODE_TEXT: &str = r#"{"type":"text","timestamp":4,"sessionID":"ses_A","part":{"id":"p4","sessionID":"ses_A","messageID":"m2","type":"text","text":"Changed the title.","time":{"start":3,"end":4}}}"#;
const OPENCODE_STEP_STOP: &str = r#"{"type":"step_finish","timestamp":3,"sessionID":"ses_A","part":{"id":"p3","reason":"stop","sessionID":"ses_A","type":"step-finish","tokens":{"total":20009,"input":19880,"output":9,"reasoning":120,"cache":{"write":0,"read":0}},"cost":0}}"#;
const OPENCODE_DONE: &str =
    r#"{"type":"done","timestamp":6,"sessionID":"ses_A","reason":"idle","rejected":[]}"#;
const OPENCODE_ERROR: &str = r#"{"type":"error","timestamp":5,"sessionID":"ses_A","error":{"name":"APIError","data":{"message":"Rate limit exceeded","statusCode":429}}}"#;

#[test]
fn usage_so_far_is_readable_while_the_agent_runs() {
    let mut reader = Reader::new(AgentFormat::OpencodeJson);
    for line in [OPENCODE_START, OPENCODE_TOOL, OPENCODE_STEP_TOOLS] {
        reader.feed_line(line.as_bytes());
    }
    assert_eq!(
        reader.usage(),
        Usage {
            turns: Some(1),
            cost_usd: Some(0.0125)
        }
    );
    let mut reader = Reader::new(AgentFormat::CodexJson);
    for line in [CODEX_THREAD, CODEX_DONE, CODEX_DONE] {
        reader.feed_line(line.as_bytes());
    }
    assert_eq!(reader.usage().turns, Some(2));
    let mut reader = Reader::new(AgentFormat::ClaudeStreamJson);
    reader.feed_line(CLAUDE_INIT.as_bytes());
    assert_eq!(
        reader.usage(),
        Usage {
            turns: None,
            cost_usd: None
        }
    );
}

#[test]
fn opencode_json() {
    let (progress, outcome) = read(
        AgentFormat::OpencodeJson,
        &[
            OPENCODE_START,
            OPENCODE_TOOL,
            OPENCODE_TOOL_ERR,
            OPENCODE_STEP_TOOLS,
            OPENCODE_TEXT,
            OPENCODE_STEP_STOP,
            OPENCODE_DONE,
        ],
    );
    assert_eq!(
        texts(&progress),
        [
            (ProgressKind::Started, "started (session ses_A)"),
            (ProgressKind::Tool, "edit: /work/app/src/index.html"),
            (ProgressKind::ToolFailed, "bash: npm test"),
            (ProgressKind::Text, "Changed the title."),
        ]
    );
    assert_eq!(outcome.verdict, Verdict::Success);
    assert_eq!(outcome.turns, Some(2));
    assert_eq!(outcome.cost_usd, Some(0.0125));
    assert_eq!(outcome.session_id.as_deref(), Some("ses_A"));
    assert_eq!(outcome.summary.as_deref(), Some("Changed the title."));

    let table: &[(&[&str], Verdict)] = &[
        // Older builds end with the stop step, without `done`.
        (&[OPENCODE_START, OPENCODE_STEP_STOP], Verdict::Success),
        // Hung on a provider error and killed: it stopped printing mid-run.
        (
            &[OPENCODE_START, OPENCODE_TOOL, OPENCODE_STEP_TOOLS],
            Verdict::Crashed,
        ),
        (&[], Verdict::Crashed),
        (
            &[OPENCODE_START, OPENCODE_ERROR, OPENCODE_DONE],
            Verdict::Failed {
                reason: FailReason::Error,
                detail: "Rate limit exceeded".into(),
            },
        ),
    ];
    for (lines, verdict) in table {
        let (_, outcome) = read(AgentFormat::OpencodeJson, lines);
        assert_eq!(&outcome.verdict, verdict, "{lines:?}");
    }
}

// Codex `exec --json`, §3: thread.started, the command_execution item and turn.completed are the
// lines quoted from openai/codex docs/exec.md; the other items follow the fields listed there.
const CODEX_THREAD: &str =
    r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a53"}"#;
const CODEX_TURN: &str = r#"{"type":"turn.started"}"#;
const CODEX_CMD_STARTED: &str = r#"{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls","aggregated_output":"","exit_code":null,"status":"in_progress"}}"#;
const CODEX_CMD: &str = r#"{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls","aggregated_output":"docs\nsrc\n","exit_code":0,"status":"completed"}}"#;
const CODEX_CMD_FAILED: &str = r#"{"type":"item.completed","item":{"id":"item_2","type":"command_execution","command":"bash -lc 'cargo test'","aggregated_output":"error","exit_code":101,"status":"failed"}}"#;
const CODEX_FILES: &str = r#"{"type":"item.completed","item":{"id":"item_3","type":"file_change","changes":[{"path":"src/main.rs","kind":"update"},{"path":"README.md","kind":"add"}],"status":"completed"}}"#;
const CODEX_MESSAGE: &str = r#"{"type":"item.completed","item":{"id":"item_4","type":"agent_message","text":"Added the flag and a test."}}"#;
const CODEX_RECONNECT: &str = r#"{"type":"error","message":"Reconnecting... 1/5"}"#;
const CODEX_DONE: &str = r#"{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,"output_tokens":122}}"#;
const CODEX_FAILED: &str =
    r#"{"type":"turn.failed","error":{"message":"stream disconnected before completion"}}"#;

#[test]
fn codex_json() {
    let (progress, outcome) = read(
        AgentFormat::CodexJson,
        &[
            CODEX_THREAD,
            CODEX_TURN,
            CODEX_CMD_STARTED,
            CODEX_CMD,
            CODEX_CMD_FAILED,
            CODEX_FILES,
            CODEX_RECONNECT,
            CODEX_MESSAGE,
            CODEX_DONE,
        ],
    );
    assert_eq!(
        texts(&progress),
        [
            (
                ProgressKind::Started,
                "started (thread 0199a213-81c0-7800-8aa1-bbab2a035a53)"
            ),
            (ProgressKind::Tool, "command: bash -lc ls"),
            (ProgressKind::ToolFailed, "command: bash -lc 'cargo test'"),
            (ProgressKind::Tool, "edit: src/main.rs, README.md"),
            (ProgressKind::Error, "Reconnecting... 1/5"),
            (ProgressKind::Text, "Added the flag and a test."),
        ]
    );
    assert_eq!(outcome.verdict, Verdict::Success);
    assert_eq!(outcome.turns, Some(1));
    assert_eq!(outcome.cost_usd, None);
    assert_eq!(
        outcome.summary.as_deref(),
        Some("Added the flag and a test.")
    );

    let failed = Verdict::Failed {
        reason: FailReason::Error,
        detail: "stream disconnected before completion".into(),
    };
    let table: &[(&[&str], Verdict)] = &[
        (&[CODEX_THREAD, CODEX_TURN, CODEX_FAILED], failed.clone()),
        // The last turn decides.
        (&[CODEX_THREAD, CODEX_FAILED, CODEX_DONE], Verdict::Success),
        (&[CODEX_THREAD, CODEX_DONE, CODEX_FAILED], failed),
        // A transient error and then silence: crashed.
        (
            &[CODEX_THREAD, CODEX_TURN, CODEX_RECONNECT],
            Verdict::Crashed,
        ),
    ];
    for (lines, verdict) in table {
        let (_, outcome) = read(AgentFormat::CodexJson, lines);
        assert_eq!(&outcome.verdict, verdict, "{lines:?}");
    }
}

#[test]
fn text_lines_are_progress_and_carry_no_verdict() {
    let (progress, outcome) = read(
        AgentFormat::Text,
        &[
            "editing examples/app/index.html",
            "   ",
            "\x1b[32mdone\x1b[0m\tall good",
        ],
    );
    assert_eq!(
        texts(&progress),
        [
            (ProgressKind::Output, "editing examples/app/index.html"),
            (ProgressKind::Output, "[32mdone [0m all good"),
        ]
    );
    assert_eq!(outcome.verdict, Verdict::Unreported);
    assert_eq!(outcome.summary.as_deref(), Some("[32mdone [0m all good"));
}

#[test]
fn formats_parse_from_their_config_names() {
    for format in AgentFormat::ALL {
        assert_eq!(format.as_str().parse::<AgentFormat>(), Ok(format));
    }
    assert!("claude".parse::<AgentFormat>().is_err());
}

#[test]
fn short_cuts_on_characters_and_flattens() {
    assert_eq!(short("  a\n\n b\tc  ", 10), "a b c");
    assert_eq!(short("ééééé", 3), "ééé…");
    assert_eq!(short("abc", 3), "abc");
}
