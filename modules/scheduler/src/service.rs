//! A service: a long-lived run (a socket held open) started again after a backoff whenever it
//! returns or fails, until shutdown. Degraded while it is down, and while it says so.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use crate::backoff::RestartPolicy;
use crate::cycle::{idle, run_once};
use crate::error::ErrorKind;
use crate::scheduler::Unit;
use crate::status::Health;

pub(crate) async fn service_loop(
    unit: Unit,
    restart: RestartPolicy,
    cancel: CancellationToken,
    mut rng: fastrand::Rng,
) {
    let (spec, status) = (&unit.spec, &unit.status);
    // Stops in a row, each after a run shorter than `healthy_after`.
    let mut streak = 0;
    let mut start = 1;
    loop {
        // A fresh start is healthy until the service says otherwise.
        if status.set_degraded_reason(None) {
            info!(unit = %spec.name, start, "service started again");
        }
        let started = Instant::now();
        let result = run_once(
            spec,
            status,
            start,
            &cancel,
            None,
            Health::of(status.clone()),
        )
        .instrument(info_span!("unit", unit = %spec.name, attempt = start))
        .await;
        let ran = started.elapsed();
        status.record_run(ran);
        if cancel.is_cancelled() {
            return;
        }
        let why = match result {
            Ok(()) => "it returned".to_owned(),
            Err(error) => {
                status.record_failure(&error.to_string(), error.kind() == ErrorKind::Panicked);
                format!("it failed: {error}")
            }
        };
        if ran >= restart.healthy_after {
            streak = 0;
        }
        streak += 1;
        let delay = restart.backoff.delay(streak, &mut rng);
        status.set_degraded_reason(Some(format!("stopped ({why}); restarting in {delay:?}")));
        warn!(unit = %spec.name, ran = ?ran, delay = ?delay, cause = %why, "service stopped; restarting after a backoff");
        if !idle(Instant::now() + delay, &status.nudge, &cancel).await {
            return;
        }
        status.record_restart();
        start += 1;
    }
}
