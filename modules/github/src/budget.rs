//! The request budget of one GitHub identity, shared by every tenant that uses it.
//!
//! GitHub limits per identity, not per repository: the primary quota (5,000/h and up), at most 100
//! concurrent requests, and about 80 content writes a minute and 500 an hour. One [`Budget`] per
//! identity enforces, before any request leaves:
//!
//! - at most `max_in_flight` requests at once, their starts paced `min_gap` apart;
//! - a pause until GitHub's hint (`Retry-After`, or the reset when `remaining` hit 0), logged once
//!   when it starts, not per request;
//! - content writes at most one a second and within the per-minute and per-hour caps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Limits for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetLimits {
    pub max_in_flight: usize,
    /// Minimum time between two request starts.
    pub min_gap: Duration,
    pub writes_per_minute: usize,
    pub writes_per_hour: usize,
    /// Minimum time between two content writes.
    pub write_gap: Duration,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        BudgetLimits {
            max_in_flight: 4,
            min_gap: Duration::from_millis(10),
            writes_per_minute: 80,
            writes_per_hour: 500,
            write_gap: Duration::from_secs(1),
        }
    }
}

/// What the budget knows, for `/metrics`, `/api/tenants` and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSnapshot {
    pub identity: String,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Unix seconds.
    pub reset_at: Option<u64>,
    pub in_flight: usize,
    pub peak_in_flight: usize,
    pub paused_for: Option<Duration>,
    pub requests: u64,
    pub not_modified: u64,
    pub writes: u64,
}

#[derive(Debug)]
struct State {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset_at: Option<u64>,
    paused_until: Option<Instant>,
    next_start: Instant,
    writes: VecDeque<Instant>,
    in_flight: usize,
    peak_in_flight: usize,
    requests: u64,
    not_modified: u64,
    write_count: u64,
}

/// The budget of one identity. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    identity: String,
    limits: BudgetLimits,
    slots: Arc<Semaphore>,
    state: Mutex<State>,
}

/// Held for the duration of one request.
#[derive(Debug)]
pub struct Permit {
    budget: Budget,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.lock().in_flight -= 1;
    }
}

/// Whether a request creates content (comments, statuses, deployments) or only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Budget {
    pub fn new(identity: impl Into<String>, limits: BudgetLimits) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
        Budget {
            inner: Arc::new(Inner {
                identity: identity.into(),
                limits,
                slots,
                state: Mutex::new(State {
                    limit: None,
                    remaining: None,
                    reset_at: None,
                    paused_until: None,
                    next_start: Instant::now(),
                    writes: VecDeque::new(),
                    in_flight: 0,
                    peak_in_flight: 0,
                    requests: 0,
                    not_modified: 0,
                    write_count: 0,
                }),
            }),
        }
    }

    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a request may start: after any pause, paced, within the write caps, and with a
    /// free in-flight slot.
    pub async fn acquire(&self, access: Access) -> Permit {
        loop {
            let wait = {
                let mut state = self.lock();
                let now = Instant::now();
                match self.wait_needed(&mut state, now, access) {
                    Some(wait) => wait,
                    None => {
                        state.next_start = now + self.inner.limits.min_gap;
                        if access == Access::Write {
                            state.writes.push_back(now);
                            state.write_count += 1;
                        }
                        break;
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
        let slot = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut state = self.lock();
        state.in_flight += 1;
        state.requests += 1;
        state.peak_in_flight = state.peak_in_flight.max(state.in_flight);
        drop(state);
        Permit {
            budget: self.clone(),
            _slot: slot,
        }
    }

    fn wait_needed(&self, state: &mut State, now: Instant, access: Access) -> Option<Duration> {
        if let Some(until) = state.paused_until {
            if until > now {
                return Some(until - now);
            }
            state.paused_until = None;
            tracing::info!(identity = %self.inner.identity, "GitHub requests resume");
        }
        if state.next_start > now {
            return Some(state.next_start - now);
        }
        if access == Access::Write {
            let limits = &self.inner.limits;
            while state
                .writes
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600))
            {
                state.writes.pop_front();
            }
            let mut wait = Duration::ZERO;
            if let Some(last) = state.writes.back() {
                wait = wait.max((*last + limits.write_gap).saturating_duration_since(now));
            }
            let in_minute: Vec<&Instant> = state
                .writes
                .iter()
                .filter(|t| now.duration_since(**t) < Duration::from_secs(60))
                .collect();
            if in_minute.len() >= limits.writes_per_minute {
                let oldest = in_minute[in_minute.len() - limits.writes_per_minute];
                wait = wait.max((*oldest + Duration::from_secs(60)).saturating_duration_since(now));
            }
            if state.writes.len() >= limits.writes_per_hour {
                let oldest = state.writes[state.writes.len() - limits.writes_per_hour];
                wait =
                    wait.max((oldest + Duration::from_secs(3600)).saturating_duration_since(now));
            }
            if !wait.is_zero() {
                return Some(wait);
            }
        }
        None
    }

    /// Learns from a response: the quota headers, and a pause when GitHub asked for one.
    /// Returns the wait hint, if the response carried one.
    pub fn observe(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
        let quota = Quota::from_headers(headers);
        let hint = wait_hint(status, headers, body, SystemTime::now());
        let mut state = self.lock();
        if status == 304 {
            state.not_modified += 1;
        }
        if quota.limit.is_some() {
            state.limit = quota.limit;
        }
        if quota.remaining.is_some() {
            state.remaining = quota.remaining;
        }
        if quota.reset.is_some() {
            state.reset_at = quota.reset;
        }
        if let Some(wait) = hint {
            let until = Instant::now() + wait;
            if state.paused_until.is_none_or(|u| u < until) {
                if state.paused_until.is_none() {
                    tracing::warn!(
                        identity = %self.inner.identity,
                        status,
                        pause = ?wait,
                        "GitHub asked us to slow down; pausing this identity's requests"
                    );
                }
                state.paused_until = Some(until);
            }
        }
        hint
    }

    /// True when less than a tenth of the primary quota is left: cold tenants stretch their
    /// interval first.
    pub fn is_low(&self) -> bool {
        let state = self.lock();
        match (state.remaining, state.limit) {
            (Some(remaining), Some(limit)) if limit > 0 => remaining * 10 < limit,
            _ => false,
        }
    }

    pub fn snapshot(&self) -> BudgetSnapshot {
        let state = self.lock();
        let now = Instant::now();
        BudgetSnapshot {
            identity: self.inner.identity.clone(),
            limit: state.limit,
            remaining: state.remaining,
            reset_at: state.reset_at,
            in_flight: state.in_flight,
            peak_in_flight: state.peak_in_flight,
            paused_for: state.paused_until.filter(|u| *u > now).map(|u| u - now),
            requests: state.requests,
            not_modified: state.not_modified,
            writes: state.write_count,
        }
    }
}

/// The `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub reset: Option<u64>,
}

impl Quota {
    pub fn from_headers(headers: &HeaderMap) -> Quota {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Quota {
            limit: number("x-ratelimit-limit"),
            remaining: number("x-ratelimit-remaining"),
            reset: number("x-ratelimit-reset"),
        }
    }
}

/// How long GitHub asked us to wait, following its documented order: `Retry-After` first; then, on
/// a 403 or 429 with `x-ratelimit-remaining: 0`, until `x-ratelimit-reset`; then, on a 403 or 429
/// whose message speaks of a secondary rate limit, at least a minute.
pub fn wait_hint(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Option<Duration> {
    asked_wait(status, headers, body, now).map(|wait| capped_wait(wait, status))
}

/// The longest wait a server's hint may impose. A hint comes from outside: a wrong clock, a
/// proxy's or a hostile server's `Retry-After: 99999999` must not stop an identity for days.
pub const MAX_WAIT_HINT: Duration = Duration::from_secs(60 * 60);

/// `wait`, at most [`MAX_WAIT_HINT`]; a cap is logged, since it means the server asked for more.
pub fn capped_wait(wait: Duration, status: u16) -> Duration {
    if wait > MAX_WAIT_HINT {
        tracing::warn!(
            status,
            asked = ?wait,
            capped_to = ?MAX_WAIT_HINT,
            "GitHub asked for a wait longer than an hour; waiting an hour"
        );
        return MAX_WAIT_HINT;
    }
    wait
}

fn asked_wait(status: u16, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Option<Duration> {
    if let Some(seconds) = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(Duration::from_secs(seconds));
    }
    if status != 403 && status != 429 {
        return None;
    }
    let quota = Quota::from_headers(headers);
    if quota.remaining == Some(0) {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let reset = quota.reset.unwrap_or(now + 60);
        // One extra second: GitHub's reset is rounded down, and clocks drift.
        return Some(Duration::from_secs(reset.saturating_sub(now) + 1));
    }
    let message = String::from_utf8_lossy(&body[..body.len().min(4096)]).to_lowercase();
    if message.contains("rate limit") {
        return Some(Duration::from_secs(60));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn wait_hints_follow_githubs_order() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let h = headers(&[("retry-after", "30"), ("x-ratelimit-remaining", "0")]);
        assert_eq!(wait_hint(403, &h, b"", now), Some(Duration::from_secs(30)));
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1000100"),
        ]);
        assert_eq!(wait_hint(403, &h, b"", now), Some(Duration::from_secs(101)));
        let body = br#"{"message":"You have exceeded a secondary rate limit."}"#;
        assert_eq!(
            wait_hint(403, &HeaderMap::new(), body, now),
            Some(Duration::from_secs(60))
        );
        let forbidden = br#"{"message":"Resource not accessible by integration"}"#;
        assert_eq!(wait_hint(403, &HeaderMap::new(), forbidden, now), None);
        assert_eq!(wait_hint(500, &h, b"", now), None);
    }

    #[test]
    fn wait_hints_are_capped_at_an_hour() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        let cases: &[(&[(&'static str, &str)], Duration)] = &[
            (&[("retry-after", "3599")], Duration::from_secs(3599)),
            (&[("retry-after", "3600")], hour),
            (&[("retry-after", "3601")], hour),
            (&[("retry-after", "18446744073709551615")], hour),
            // A reset a day away (a wrong clock, or a hostile server).
            (
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1086400"),
                ],
                hour,
            ),
            (
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1003000"),
                ],
                Duration::from_secs(3001),
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(
                wait_hint(429, &headers(pairs), b"", now),
                Some(*want),
                "{pairs:?}"
            );
        }
        assert_eq!(capped_wait(Duration::from_secs(7200), 403), hour);
        assert_eq!(capped_wait(Duration::ZERO, 403), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_is_bounded_and_starts_are_paced() {
        let limits = BudgetLimits {
            max_in_flight: 2,
            min_gap: Duration::from_millis(100),
            ..BudgetLimits::default()
        };
        let budget = Budget::new("token:x", limits);
        let t0 = Instant::now();
        let a = budget.acquire(Access::Read).await;
        let b = budget.acquire(Access::Read).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        let budget2 = budget.clone();
        let third = tokio::spawn(async move {
            let _p = budget2.acquire(Access::Read).await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!third.is_finished(), "a third request waits for a slot");
        let freed = Instant::now();
        drop(a);
        let started = third.await.unwrap();
        assert_eq!(started, freed, "it starts the moment a slot frees");
        assert_eq!(budget.snapshot().peak_in_flight, 2);
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_pauses_every_request_of_the_identity() {
        let budget = Budget::new("token:x", BudgetLimits::default());
        let hint = budget.observe(
            403,
            &headers(&[("retry-after", "42"), ("x-ratelimit-remaining", "100")]),
            b"",
        );
        assert_eq!(hint, Some(Duration::from_secs(42)));
        let t0 = Instant::now();
        let _p = budget.acquire(Access::Read).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(42));
        assert_eq!(budget.snapshot().remaining, Some(100));
    }

    #[tokio::test(start_paused = true)]
    async fn writes_are_one_a_second_and_capped_per_minute() {
        let limits = BudgetLimits {
            writes_per_minute: 3,
            min_gap: Duration::ZERO,
            ..BudgetLimits::default()
        };
        let budget = Budget::new("token:x", limits);
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..4 {
            drop(budget.acquire(Access::Write).await);
            starts.push(t0.elapsed().as_secs());
        }
        // One a second, then the fourth waits for the first to leave the minute window.
        assert_eq!(starts, [0, 1, 2, 60]);
        // Reads are not held back by the write caps.
        let t1 = Instant::now();
        drop(budget.acquire(Access::Read).await);
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }

    #[test]
    fn low_quota_is_under_a_tenth() {
        let budget = Budget::new("token:x", BudgetLimits::default());
        assert!(!budget.is_low());
        budget.observe(
            200,
            &headers(&[
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-remaining", "499"),
            ]),
            b"",
        );
        assert!(budget.is_low());
        budget.observe(200, &headers(&[("x-ratelimit-remaining", "500")]), b"");
        assert!(!budget.is_low());
    }
}
