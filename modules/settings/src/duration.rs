//! Durations as humantime text (`"30s"`, `"5m"`, `"7d"`).

use std::time::Duration;

use crate::{Origins, Problems};

/// `text` as a duration, or the message that says how to write one.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write it like \"30s\", \"5m\", \"2h\" or \"7d\"")
    })
}

/// The duration at `key` of the main file, or `default` when unset; a bad value is recorded (and
/// `default` returned, so that resolution goes on and finds the other problems too).
pub fn duration(
    p: &mut Problems,
    origins: &Origins<'_>,
    key: &str,
    value: Option<&String>,
    default: Duration,
) -> Duration {
    match value.map(|v| parse_duration(v)) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(message)) => {
            p.push(origins.of(key), Some(key), message);
            default
        }
    }
}
