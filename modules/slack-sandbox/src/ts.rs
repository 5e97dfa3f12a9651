//! Slack message timestamps (`"1700000000.000100"`): the sandbox's clock and the parsing of the
//! `oldest`/`latest`/cursor bounds clients send.

/// A message timestamp as microseconds since the epoch; ordered like Slack orders messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Ts(u64);

impl Ts {
    /// The first timestamp the sandbox hands out: `1700000000.000100`.
    pub(crate) const FIRST: Ts = Ts(1_700_000_000_000_100);
    /// Each new message is this many microseconds after the previous one, so timestamps never
    /// repeat and string order equals time order (the seconds keep ten digits for ages).
    const STEP: u64 = 100;

    pub(crate) fn next(self) -> Ts {
        Ts(self.0 + Ts::STEP)
    }

    /// The wall clock, to the microsecond.
    pub(crate) fn now() -> Ts {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ts(u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX))
    }

    /// Parses `"1700000000.000100"`, `"1700000000.0001"`, `"1700000000"` or `"0"`; `None` for
    /// anything else (Slack answers `invalid_ts_oldest` / `invalid_ts_latest`).
    pub(crate) fn parse(text: &str) -> Option<Ts> {
        let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
        if secs.is_empty() || frac.len() > 6 {
            return None;
        }
        if !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let secs: u64 = secs.parse().ok()?;
        let micros: u64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<6}").parse().ok()?
        };
        secs.checked_mul(1_000_000)?.checked_add(micros).map(Ts)
    }

    /// Seconds since the epoch, for `event_time`.
    pub(crate) fn secs(self) -> u64 {
        self.0 / 1_000_000
    }
}

impl std::fmt::Display for Ts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::Ts;

    #[test]
    fn formats_and_parses_slack_timestamps() {
        assert_eq!(Ts::FIRST.to_string(), "1700000000.000100");
        assert_eq!(Ts::FIRST.next().to_string(), "1700000000.000200");
        assert_eq!(Ts::parse("1700000000.000100"), Some(Ts::FIRST));
        assert_eq!(Ts::parse("1700000000.0001"), Some(Ts::FIRST));
        assert!(Ts::parse("1700000000").unwrap() < Ts::FIRST);
        assert_eq!(Ts::parse("0"), Some(Ts(0)));
        assert_eq!(Ts::parse("abc"), None);
        assert_eq!(Ts::parse("1.0000001"), None);
        assert_eq!(Ts::parse(""), None);
    }
}
