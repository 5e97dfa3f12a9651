//! The `health` step: the contract's health check path must answer 2xx within its startup
//! timeout, probed ([`crate::probe`]) on two ways in: the loopback port the rewrite published
//! (the daemon on the host), and the container's address on the routed network (the daemon in a
//! container on that network).

use std::time::Duration;

use super::checkout::Checked;
use super::project::Written;
use super::{Attempt, Stop};
use crate::probe;
use crate::state::Stage;

pub(super) async fn run(a: &Attempt<'_>, checked: &Checked, written: &Written) -> Result<(), Stop> {
    let spec = &checked.checkout.spec;
    a.step(Stage::Health).await?;
    let mut addrs = Vec::new();
    if let Ok(addr) = a
        .or_cancel(
            checked
                .cli
                .port(&written.project, &spec.service, spec.internal_port),
        )
        .await?
    {
        addrs.push(addr);
    }
    if let Ok(engine) = a.previews.engine().await
        && let Ok(ip) = engine
            .service_ip(a.project, &spec.service, &written.network)
            .await
    {
        addrs.push(std::net::SocketAddr::new(ip, spec.internal_port));
    }
    if addrs.is_empty() {
        return Err(Stop::failed(
            Stage::Health,
            format!(
                "service `{}` has neither a published port nor an address on network {}",
                spec.service, written.network
            ),
        ));
    }
    a.or_cancel(probe::wait_healthy(
        &addrs,
        &written.host,
        &spec.healthcheck_path,
        Duration::from_secs(spec.startup_timeout_seconds),
    ))
    .await?
    .map_err(|e| Stop::failed(Stage::Health, e.to_string()))?;
    Ok(())
}
