//! A build's transcript: `{state_dir}/builds/{id}.log`, what the agent printed and what the
//! runner did, served by `GET /builds/{id}/log`. Every line is redacted of the build's secrets
//! (the GitHub token and its base64 form, the callback secret, the agent's secret variables)
//! before it is written; the agent's lines are already redacted by the process crate, the
//! runner's own lines (errors quoting git or GitHub) are redacted here. The file is bounded; past
//! the bound one line says so and the rest is dropped. The end of it is kept in memory for the
//! result's `output`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use productbuilder_process::REDACTED;

use crate::spec::MAX_OUTPUT_BYTES;

/// The largest transcript file.
pub const MAX_TRANSCRIPT_BYTES: u64 = 32 * 1024 * 1024;

/// The transcript file of build `id`.
pub fn path(state_dir: &Path, id: crate::BuildId) -> PathBuf {
    state_dir.join("builds").join(format!("{id}.log"))
}

#[derive(Debug)]
pub(crate) struct Transcript {
    file: Option<File>,
    written: u64,
    cut: bool,
    secrets: Vec<String>,
    /// The last lines, at most `MAX_OUTPUT_BYTES` in all.
    tail: VecDeque<String>,
    tail_bytes: usize,
}

impl Transcript {
    /// Appends to the file at `path` (a retried build's attempts follow each other). A file that
    /// cannot be opened leaves a transcript that only keeps its tail in memory.
    pub fn open(path: &Path) -> Transcript {
        let file = path
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            })
            .ok();
        let written = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Transcript {
            file,
            written,
            cut: false,
            secrets: Vec::new(),
            tail: VecDeque::new(),
            tail_bytes: 0,
        }
    }

    /// A secret to redact from every later line (empty strings are ignored).
    pub fn redact(&mut self, secret: impl Into<String>) {
        let secret = secret.into();
        if !secret.is_empty() && !self.secrets.contains(&secret) {
            self.secrets.push(secret);
        }
    }

    pub fn redacted(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }

    /// Writes one line (several if it holds newlines), redacted.
    pub fn line(&mut self, text: &str) {
        let text = self.redacted(text);
        for line in text.lines() {
            self.keep(line);
            self.write(line);
        }
    }

    /// A line of the runner's own, marked so it is told from the agent's.
    pub fn note(&mut self, text: &str) {
        self.line(&format!("[productbuilder] {text}"));
    }

    fn keep(&mut self, line: &str) {
        self.tail.push_back(line.to_owned());
        self.tail_bytes += line.len() + 1;
        while self.tail_bytes > MAX_OUTPUT_BYTES && self.tail.len() > 1 {
            let gone = self.tail.pop_front().expect("not empty");
            self.tail_bytes -= gone.len() + 1;
        }
    }

    fn write(&mut self, line: &str) {
        let Some(file) = &mut self.file else {
            return;
        };
        if self.cut {
            return;
        }
        let bytes = line.len() as u64 + 1;
        if self.written + bytes > MAX_TRANSCRIPT_BYTES {
            self.cut = true;
            let _ = writeln!(
                file,
                "[productbuilder] transcript cut: it reached its bound"
            );
            return;
        }
        if writeln!(file, "{line}").is_ok() {
            self.written += bytes;
        }
    }

    /// The end of the transcript, for the result's `output`.
    pub fn tail(&self) -> String {
        let mut out = String::with_capacity(self.tail_bytes);
        for line in &self.tail {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_redacted_and_the_tail_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("builds/1.log");
        let mut t = Transcript::open(&path);
        t.redact("ghs_SECRET");
        t.line("token ghs_SECRET here\nsecond");
        t.note("push failed: ghs_SECRET");
        for _ in 0..2000 {
            t.line(&"x".repeat(100));
        }
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(!file.contains("ghs_SECRET"));
        assert!(file.starts_with(
            "token [redacted] here\nsecond\n[productbuilder] push failed: [redacted]\n"
        ));
        assert!(t.tail().len() <= MAX_OUTPUT_BYTES);
        assert!(t.tail().ends_with(&format!("{}\n", "x".repeat(100))));
    }
}
