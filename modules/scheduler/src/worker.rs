//! A worker: one long-lived task that runs a cycle, then sleeps its interval (or until nudged).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cycle::{CycleEnd, idle, run_cycle};
use crate::scheduler::Unit;

/// Rounds deadlines up to the next tick boundary.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tick {
    pub base: Instant,
    pub tick: Duration,
}

impl Tick {
    pub fn after(&self, period: Duration) -> Instant {
        let deadline = Instant::now() + period;
        let tick = self.tick.as_nanos();
        if tick == 0 {
            return deadline;
        }
        let since = deadline.duration_since(self.base).as_nanos();
        let rounded = since.div_ceil(tick) * tick;
        self.base + Duration::from_nanos(rounded as u64)
    }
}

pub(crate) async fn worker_loop(
    unit: Unit,
    interval: Duration,
    clock: Tick,
    cancel: CancellationToken,
    mut rng: fastrand::Rng,
) {
    // Spread first runs over one interval so a thousand units never fire in lockstep.
    let first = Duration::from_millis(rng.u64(0..interval.as_millis().max(1) as u64));
    if !idle(clock.after(first), &unit.status.nudge, &cancel).await {
        return;
    }
    loop {
        match run_cycle(&unit, &cancel, &mut rng).await {
            CycleEnd::Passed => {
                if unit.status.set_degraded(false) {
                    info!(unit = %unit.spec.name, "unit recovered");
                }
            }
            CycleEnd::Failed {
                error,
                attempts,
                exhausted,
            } => {
                let why = if exhausted {
                    "retries exhausted"
                } else {
                    "permanent failure"
                };
                if unit.status.set_degraded(true) {
                    warn!(unit = %unit.spec.name, attempts, cause = %error, "unit still degraded ({why}); keeps its schedule");
                } else {
                    error!(unit = %unit.spec.name, attempts, cause = %error, "unit degraded ({why}); keeps its schedule");
                }
            }
            CycleEnd::Cancelled => return,
        }
        if cancel.is_cancelled() || !idle(clock.after(interval), &unit.status.nudge, &cancel).await
        {
            return;
        }
    }
}
