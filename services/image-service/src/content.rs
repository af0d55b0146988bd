//! A pull's lease. Blobs and snapshots a pull writes are held by its lease until the image
//! records reference them. The lease is labelled with the replica that owns the pull (by its
//! socket) and the image it is for, so that a replica killed mid-pull leaves a lease its
//! restarted self can find: a retried pull of the same image takes it over (what the killed
//! pull fetched stays protected, a partial download resumes), and leases nobody retried are
//! deleted a while after the restart. containerd expires them anyway after a day.

use crisp_containerd::labels::{self, crisp};
use crisp_containerd::{Containerd, ContainerdError, Lease, LeaseId, LeaseInfo};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a pull's lease lives at most when nobody deletes it.
const LEASE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Creates a lease for one pull of `purpose` (the image) by `owner` (this replica's socket).
pub async fn create_pull_lease(containerd: &Containerd, owner: &str, purpose: &str) -> Result<Lease, ContainerdError> {
    let labels = HashMap::from([
        (crisp::PURPOSE.to_string(), labels::value(purpose)),
        (crisp::PULL_OWNER.to_string(), labels::value(owner)),
    ]);
    Lease::create(containerd, "crisp-pull", labels, LEASE_LIFETIME).await
}

/// The leases pulls of an earlier run of this replica (`owner`) left when it died: those
/// created before `started` (when this run began), to the second.
async fn stale_leases(
    containerd: &Containerd,
    owner: &str,
    started: SystemTime,
) -> Result<Vec<LeaseInfo>, ContainerdError> {
    let leases = containerd.leases_labelled(crisp::PULL_OWNER, owner).await?;
    let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let cutoff = seconds(started);
    Ok(leases.into_iter().filter(|lease| lease.created.is_some_and(|created| seconds(created) < cutoff)).collect())
}

/// Leases an earlier, killed run of this replica left for a pull of `purpose`, if any: the
/// retry takes one over, so what the killed pull fetched stays protected.
pub async fn stale_leases_for(
    containerd: &Containerd,
    owner: &str,
    purpose: &str,
    started: SystemTime,
) -> Result<Vec<LeaseId>, ContainerdError> {
    let purpose = labels::value(purpose);
    Ok(stale_leases(containerd, owner, started)
        .await?
        .into_iter()
        .filter(|lease| lease.labels.get(crisp::PURPOSE) == Some(&purpose))
        .map(|lease| lease.id)
        .collect())
}

/// Deletes the leases a previous run of this replica (`owner`) left when it died mid-pull.
/// Called a while after start, so that a retried pull has taken hold of what they protect.
pub async fn delete_stale_leases(containerd: &Containerd, owner: &str, started: SystemTime) {
    let leases = match stale_leases(containerd, owner, started).await {
        Ok(leases) => leases,
        Err(err) => {
            tracing::warn!(error = %err, "listing stale pull leases failed");
            return;
        }
    };
    for lease in leases {
        tracing::info!(lease = %lease.id, "deleting a lease left by a pull that did not finish");
        if let Err(err) = containerd.delete_lease(&lease.id, false).await {
            tracing::warn!(lease = %lease.id, error = %err, "deleting a stale lease failed");
        }
    }
}
