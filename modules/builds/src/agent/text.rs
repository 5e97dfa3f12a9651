//! `text`: any other command (aider, a script). Each non-blank line is a progress step; the
//! output holds no verdict (the notes, llm-and-agents.md §3, "generic-command adapter": judge by
//! the exit code and the diff), and the last non-blank line is the summary.

use super::{Format, Progress, ProgressKind, Report, SUMMARY_MAX_CHARS, Verdict, short};

pub(super) struct Text;

impl Format for Text {
    fn line(&mut self, line: &[u8], report: &mut Report, out: &mut Vec<Progress>) {
        let line = String::from_utf8_lossy(line);
        if line.trim().is_empty() {
            return;
        }
        out.push(Progress::new(ProgressKind::Output, &line));
        report.summary = Some(short(&line, SUMMARY_MAX_CHARS));
    }

    fn finish(&mut self, report: &mut Report) {
        report.verdict = Some(Verdict::Unreported);
    }
}
