//! Leases: what a lease holds (content, snapshots) is safe from containerd's garbage
//! collector until the lease goes. A [`Lease`] is a guard: created with labels and an expiry,
//! it deletes its lease when dropped unless [`Lease::keep`] or [`Lease::into_id`] said
//! otherwise; [`Lease::delete`] deletes it now and reports how that went. The expiry
//! (`containerd.io/gc.expire`) is the last resort for a process that died holding one.

use crate::{Containerd, ContainerdError, labels};
use containerd_client::services::v1::{AddResourceRequest, CreateRequest, DeleteRequest, ListRequest, Resource};
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};
use tonic::Request;

/// The metadata key containerd reads a call's lease from.
const LEASE_KEY: &str = "containerd-lease";

/// A lease's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(String);

impl LeaseId {
    pub fn new(id: impl Into<String>) -> Self {
        LeaseId(id.into())
    }

    /// A fresh id: `prefix`, the time and a random part.
    pub fn generate(prefix: &str) -> Self {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let random = getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()));
        LeaseId(format!("{prefix}-{nanos}-{random:016x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `message` as a request made under `lease`: what it creates is held by the lease.
pub fn leased<T>(message: T, lease: &LeaseId) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = lease.as_str().parse() {
        request.metadata_mut().insert(LEASE_KEY, value);
    }
    request
}

/// Something a lease can hold.
#[derive(Debug, Clone, Copy)]
pub enum Held<'a> {
    /// A blob in the content store, by digest.
    Content(&'a str),
    /// A snapshot, by key (a committed layer's key is its chain id).
    Snapshot { snapshotter: &'a str, key: &'a str },
}

impl Held<'_> {
    fn resource(&self) -> Resource {
        match self {
            Held::Content(digest) => Resource { id: digest.to_string(), r#type: "content".into() },
            Held::Snapshot { snapshotter, key } => {
                Resource { id: key.to_string(), r#type: format!("snapshots/{snapshotter}") }
            }
        }
    }
}

/// A lease as containerd lists it.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    pub id: LeaseId,
    pub labels: HashMap<String, String>,
    /// When it was created, if containerd said.
    pub created: Option<SystemTime>,
}

/// A lease that is deleted when dropped, unless kept.
pub struct Lease {
    containerd: Containerd,
    id: LeaseId,
    armed: bool,
}

impl Lease {
    /// Creates a lease `<prefix>-…` with `labels`, which containerd deletes by itself after
    /// `lifetime`.
    pub async fn create(
        containerd: &Containerd,
        prefix: &str,
        mut labels: HashMap<String, String>,
        lifetime: Duration,
    ) -> Result<Lease, ContainerdError> {
        let id = LeaseId::generate(prefix);
        let expire = SystemTime::now() + lifetime;
        labels.insert(labels::gc::EXPIRE.to_string(), humantime::format_rfc3339_seconds(expire).to_string());
        containerd
            .leases()
            .create(CreateRequest { id: id.to_string(), labels })
            .await
            .map_err(|s| ContainerdError::call("creating a lease", s))?;
        Ok(Lease { containerd: containerd.clone(), id, armed: true })
    }

    /// Takes charge of the existing lease `id` (one a killed process left): it is deleted
    /// when this guard goes.
    pub fn adopt(containerd: &Containerd, id: LeaseId) -> Lease {
        Lease { containerd: containerd.clone(), id, armed: true }
    }

    pub fn id(&self) -> &LeaseId {
        &self.id
    }

    /// `message` as a request under this lease.
    pub fn request<T>(&self, message: T) -> Request<T> {
        leased(message, &self.id)
    }

    /// Adds `what` to the lease: something present before is kept at least as long as it.
    pub async fn hold(&self, what: Held<'_>) -> Result<(), ContainerdError> {
        self.containerd.hold_in_lease(&self.id, what).await
    }

    /// Lets the lease outlive this guard (its expiry still applies).
    pub fn keep(self) {
        let _ = self.into_id();
    }

    /// The lease's id; the lease outlives this guard.
    pub fn into_id(mut self) -> LeaseId {
        self.armed = false;
        std::mem::replace(&mut self.id, LeaseId(String::new()))
    }

    /// Deletes the lease now (an absent lease is deleted already).
    pub async fn delete(mut self) -> Result<(), ContainerdError> {
        self.armed = false;
        self.containerd.delete_lease(&self.id, false).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (containerd, id) = (self.containerd.clone(), self.id.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(err) = containerd.delete_lease(&id, false).await {
                        tracing::warn!(lease = %id, error = %err, "deleting a dropped lease failed; it expires by itself");
                    }
                });
            }
            Err(_) => tracing::warn!(lease = %id, "a lease dropped outside a runtime is left to expire"),
        }
    }
}

impl Containerd {
    /// Deletes the lease `id`; `sync` waits for the garbage collection it allows. An absent
    /// lease is deleted already.
    pub async fn delete_lease(&self, id: &LeaseId, sync: bool) -> Result<(), ContainerdError> {
        match self.leases().delete(DeleteRequest { id: id.to_string(), sync }).await {
            Ok(_) => Ok(()),
            Err(s) => match ContainerdError::call("deleting a lease", s) {
                err if err.is_not_found() => Ok(()),
                err => Err(err),
            },
        }
    }

    /// Adds `what` to the lease `id`.
    pub async fn hold_in_lease(&self, id: &LeaseId, what: Held<'_>) -> Result<(), ContainerdError> {
        let request = AddResourceRequest { id: id.to_string(), resource: Some(what.resource()) };
        self.leases().add_resource(request).await.map_err(|s| ContainerdError::call("adding to a lease", s))?;
        Ok(())
    }

    /// The leases whose label `key` is `value`.
    pub async fn leases_labelled(&self, key: &str, value: &str) -> Result<Vec<LeaseInfo>, ContainerdError> {
        let filter = format!("labels.\"{}\"==\"{}\"", quote(key), quote(value));
        let leases = self
            .leases()
            .list(ListRequest { filters: vec![filter] })
            .await
            .map_err(|s| ContainerdError::call("listing leases", s))?
            .into_inner()
            .leases;
        Ok(leases
            .into_iter()
            .map(|lease| LeaseInfo {
                id: LeaseId(lease.id),
                labels: lease.labels,
                created: lease.created_at.and_then(|t| {
                    let secs = u64::try_from(t.seconds).ok()?;
                    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, t.nanos.clamp(0, 999_999_999) as u32))
                }),
            })
            .collect())
    }
}

/// `s` inside a containerd filter's double quotes.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
