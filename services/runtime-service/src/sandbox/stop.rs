//! StopPodSandbox: "stops any running process that is part of the sandbox and reclaims
//! network resources (e.g. IP addresses) allocated to the sandbox ... idempotent, and must
//! not return an error if all relevant resources have already been reclaimed."
//!
//! The pod's infra process (where it has one) is stopped (SIGTERM, SIGKILL after a grace) while
//! its network is detached (CNI DEL, most of a stop's time); then one record update makes the
//! pod NOTREADY and, when DEL succeeded, detached. A DEL that fails leaves the record marked
//! attached and answers the error, so the next stop (or remove) tries again. An unknown id
//! succeeds.

use super::record::{self, State, Stored};
use super::{SandboxError, infra, network};
use crisp_config::Config;
use crisp_containerd::Containerd;

pub async fn stop(containerd: &Containerd, config: &Config, id: &str) -> Result<(), SandboxError> {
    let Some(stored) = record::find(containerd, id).await? else {
        tracing::debug!(id, "StopPodSandbox of an unknown pod: nothing to do");
        return Ok(());
    };
    stop_pod(containerd, config, &stored).await
}

pub async fn stop_pod(containerd: &Containerd, config: &Config, stored: &Stored) -> Result<(), SandboxError> {
    let id = &stored.sandbox.id;
    let stop_infra = async {
        match &stored.sandbox.infra {
            Some(infra) => infra::stop(containerd, id, infra).await,
            None => Ok(()),
        }
    };
    let detach = async {
        match stored.network_attached {
            true => network::detach(id, &stored.sandbox.network_dir, &config.runtime.cni_bin_dirs).await,
            false => Ok(()),
        }
    };
    let (stopped, detached) = tokio::join!(stop_infra, detach);
    let not_ready = stored.recorded_state == State::Ready;
    record::set_stopped(containerd, id, not_ready, stored.network_attached && detached.is_ok()).await?;
    stopped?;
    detached
}
