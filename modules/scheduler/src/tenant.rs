//! A degraded tenant: one of its preflights failed (for good, or after its retries). Its failing
//! preflight is retried with a never-ending backoff; once it passes, the tenant's later
//! preflights run, then its workers and services start. Every other tenant runs meanwhile.

use std::time::SystemTime;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::cycle::{CycleEnd, idle, run_cycle};
use crate::error::UnitError;
use crate::scheduler::{Unit, start};
use crate::status::{DegradedTenant, StatusBoard, TenantState};
use crate::unit::TenantId;
use crate::worker::Tick;

/// Records on the board that `tenant` is degraded by `unit`'s failure; logs the transition.
pub(crate) fn degrade(
    board: &StatusBoard,
    tenant: &TenantId,
    unit: &Unit,
    error: &UnitError,
    permanent: bool,
    failures: u32,
) {
    unit.status.set_degraded(true);
    let since = match board.tenant_state(tenant.as_str()) {
        Some(TenantState::Degraded(d)) => d.since,
        _ => {
            error!(
                tenant = %tenant,
                unit = %unit.spec.name,
                cause = %error,
                permanent,
                "tenant degraded: its preflight failed; its workers wait while it is retried with backoff, other tenants run"
            );
            SystemTime::now()
        }
    };
    board.set_tenant_state(
        tenant,
        TenantState::Degraded(DegradedTenant {
            tenant: tenant.clone(),
            unit: unit.spec.name.clone(),
            kind: error.kind(),
            reason: error.to_string(),
            permanent,
            failures,
            since,
        }),
    );
}

/// What a degraded tenant still has to do.
pub(crate) struct Recovery {
    pub tenant: TenantId,
    /// Its preflights not yet passed, the failing one first, then by stage.
    pub preflights: Vec<Unit>,
    /// Its workers and services, started once every preflight passed.
    pub started: Vec<Unit>,
}

/// What every recovery shares.
#[derive(Clone)]
pub(crate) struct RecoveryCtx {
    pub board: StatusBoard,
    pub backoff: Backoff,
    pub clock: Tick,
    pub cancel: CancellationToken,
}

pub(crate) async fn recover(recovery: Recovery, ctx: RecoveryCtx, mut rng: fastrand::Rng) {
    let Recovery {
        tenant,
        preflights,
        started,
    } = recovery;
    let board = &ctx.board;
    // Failed cycles in a row of the preflight at hand; the main phase failed it once.
    let mut failures = 1;
    for unit in &preflights {
        loop {
            if let Some(TenantState::Degraded(_)) = board.tenant_state(tenant.as_str()) {
                let delay = ctx.backoff.delay(failures, &mut rng);
                info!(tenant = %tenant, unit = %unit.spec.name, delay = ?delay, "tenant degraded; retrying its preflight after a backoff (a nudge of the tenant retries at once)");
                if !idle(Instant::now() + delay, &unit.status.nudge, &ctx.cancel).await {
                    return;
                }
            }
            match run_cycle(unit, &ctx.cancel, &mut rng).await {
                CycleEnd::Passed => {
                    unit.status.set_degraded(false);
                    if let Some(TenantState::Degraded(_)) = board.tenant_state(tenant.as_str()) {
                        info!(tenant = %tenant, unit = %unit.spec.name, "the failing preflight passed; the tenant starts");
                        board.set_tenant_state(&tenant, TenantState::Starting);
                    }
                    failures = 0;
                    break;
                }
                CycleEnd::Cancelled => return,
                CycleEnd::Failed {
                    error,
                    attempts,
                    exhausted,
                } => {
                    failures += 1;
                    warn!(tenant = %tenant, unit = %unit.spec.name, attempts, cause = %error, "tenant still degraded");
                    degrade(board, &tenant, unit, &error, !exhausted, failures);
                }
            }
        }
    }
    board.set_tenant_state(&tenant, TenantState::Running);
    info!(tenant = %tenant, units = started.len(), "the tenant's preflights passed; starting its workers and services");
    let mut tasks = JoinSet::new();
    for unit in started {
        tasks.spawn(start(unit, ctx.clock, ctx.cancel.clone(), &mut rng));
    }
    // They end on cancellation; the scheduler's drain bounds how long that may take.
    while tasks.join_next().await.is_some() {}
}
