//! What a build has done so far, on disk beside its checkout
//! (`{state_dir}/builds/{id}/state.json`), written after each step, so that a build taken back by
//! recovery (its daemon died) goes on from it: the agent's work is committed, pushed and opened as
//! a pull request once, never run twice. Removed with the checkout when the build ends.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::BuildResult;
use crate::status::Status;

/// How the agent's run ended, as the runner judged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum AgentEnd {
    /// It reported success.
    Success,
    /// It stopped before the end (a budget, an error it reported, a crash): what it changed is
    /// kept as a draft pull request; `reason` says what happened.
    Partial { reason: String },
    /// Cancelled on request.
    Cancelled,
    /// It could not run at all.
    Failed { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDone {
    pub end: AgentEnd,
    pub turns: Option<u32>,
    pub cost_usd: Option<f64>,
    /// The agent's last message (redacted), for the pull request.
    pub summary: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPull {
    pub number: u64,
    pub url: String,
    pub draft: bool,
}

/// The build's end, decided before its callback is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedEnd {
    pub status: Status,
    pub reason: String,
    pub result: BuildResult,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    // No clone URL: where the work is pushed is asked of the forge again on resume (the agent runs
    // beside this file and could rewrite it). The branch is recomputed too; kept for the comment.
    pub branch: Option<String>,
    /// The branch the pull request goes into.
    pub base_branch: Option<String>,
    /// `HEAD` right after the clone: what the agent's changes are measured against.
    pub base_sha: Option<String>,
    /// The open pull request this build goes on from.
    pub continuing: Option<u64>,
    pub agent: Option<AgentDone>,
    pub commit_sha: Option<String>,
    pub files_changed: Vec<String>,
    pub pushed: bool,
    pub pull: Option<SavedPull>,
    pub end: Option<SavedEnd>,
}

pub fn path(build_dir: &Path) -> PathBuf {
    build_dir.join("state.json")
}

impl Saved {
    /// The saved state in `build_dir`, if there is one that can be read.
    pub fn load(build_dir: &Path) -> Option<Saved> {
        let bytes = std::fs::read(path(build_dir)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes it whole (a new file renamed over the old: a kill leaves one or the other).
    pub fn store(&self, build_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(build_dir)?;
        let tmp = build_dir.join("state.json.new");
        std::fs::write(&tmp, serde_json::to_vec(self).expect("state serialises"))?;
        std::fs::rename(&tmp, path(build_dir))
    }
}
