//! containerd's content store and leases, as a pull uses them: blobs are written through
//! ingests (`content.Write`) committed only with their expected digest and size, so containerd
//! verifies every byte; a lease holds what a pull wrote until the image record references it.

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    AbortRequest, AddResourceRequest, CreateRequest, DeleteRequest, InfoRequest, ListRequest, ReadContentRequest,
    Resource, UpdateRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use crisp_containerd::{Containerd, ContainerdError};
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, Streaming};

/// The metadata key containerd reads a call's lease from.
const LEASE_KEY: &str = "containerd-lease";
/// containerd removes a lease carrying this label once the time passes: a pull whose process
/// died does not hold its content for ever.
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// How long a pull's lease lives at most when nobody deletes it.
const LEASE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A request carrying `lease`.
pub fn leased<T>(message: T, lease: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = lease.parse() {
        request.metadata_mut().insert(LEASE_KEY, value);
    }
    request
}

/// The label naming the image service replica (by its socket) whose pull holds a lease.
const OWNER_LABEL: &str = "crisp.io/pull-owner";

/// Creates a lease for one pull by `owner`; it expires by itself after a day.
pub async fn create_lease(containerd: &Containerd, owner: &str, purpose: &str) -> Result<String, ContainerdError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let id = format!("crisp-pull-{}-{}-{}", now.as_nanos(), std::process::id(), rand_suffix());
    let expire = httpdate_rfc3339(now + LEASE_LIFETIME);
    let labels = HashMap::from([
        (LEASE_EXPIRE_LABEL.to_string(), expire),
        (PURPOSE_LABEL.to_string(), purpose.chars().take(200).collect()),
        (OWNER_LABEL.to_string(), owner.chars().take(200).collect()),
    ]);
    LeasesClient::new(containerd.channel())
        .create(CreateRequest { id: id.clone(), labels })
        .await
        .map_err(|s| ContainerdError::call("creating a lease", s))?;
    Ok(id)
}

pub async fn delete_lease(containerd: &Containerd, lease: &str) -> Result<(), ContainerdError> {
    match LeasesClient::new(containerd.channel()).delete(DeleteRequest { id: lease.to_string(), sync: false }).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(ContainerdError::call("deleting a lease", s)),
    }
}

/// Holds `id` (a content digest, or a snapshot key with `kind` = `snapshots/<snapshotter>`)
/// in `lease`: something present before this pull began is kept until the image references it.
pub async fn hold(containerd: &Containerd, lease: &str, kind: &str, id: &str) -> Result<(), ContainerdError> {
    let request = AddResourceRequest {
        id: lease.to_string(),
        resource: Some(Resource { id: id.to_string(), r#type: kind.to_string() }),
    };
    LeasesClient::new(containerd.channel())
        .add_resource(request)
        .await
        .map_err(|s| ContainerdError::call("adding to a lease", s))?;
    Ok(())
}

/// The label naming what a pull's lease is for (the image reference).
const PURPOSE_LABEL: &str = "crisp.io/purpose";

/// The leases pulls of an earlier run of this replica (`owner`) left when it died: those
/// created before `started` (when this run began).
async fn stale_leases(
    containerd: &Containerd,
    owner: &str,
    started: std::time::SystemTime,
) -> Result<Vec<containerd_client::services::v1::Lease>, ContainerdError> {
    let quoted = owner.replace('\\', "\\\\").replace('"', "\\\"");
    let filter = format!("labels.\"{OWNER_LABEL}\"==\"{quoted}\"");
    let leases = LeasesClient::new(containerd.channel())
        .list(ListRequest { filters: vec![filter] })
        .await
        .map_err(|s| ContainerdError::call("listing leases", s))?
        .into_inner()
        .leases;
    let cutoff = started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    Ok(leases
        .into_iter()
        .filter(|lease| lease.created_at.as_ref().map(|t| t.seconds).unwrap_or(i64::MAX) < cutoff)
        .collect())
}

/// A lease an earlier, killed run of this replica left for a pull of `purpose`, if any: the
/// retry takes it over, so what the killed pull fetched stays protected.
pub async fn stale_lease_for(
    containerd: &Containerd,
    owner: &str,
    purpose: &str,
    started: std::time::SystemTime,
) -> Result<Vec<String>, ContainerdError> {
    let purpose: String = purpose.chars().take(200).collect();
    Ok(stale_leases(containerd, owner, started)
        .await?
        .into_iter()
        .filter(|lease| lease.labels.get(PURPOSE_LABEL) == Some(&purpose))
        .map(|lease| lease.id)
        .collect())
}

/// Deletes the leases a previous run of this replica (`owner`) left when it died mid-pull.
/// Called a while after start, so that a retried pull has taken hold of what they protect.
pub async fn delete_stale_leases(containerd: &Containerd, owner: &str, started: std::time::SystemTime) {
    let leases = match stale_leases(containerd, owner, started).await {
        Ok(leases) => leases,
        Err(err) => {
            tracing::warn!(error = %err, "listing stale pull leases failed");
            return;
        }
    };
    for lease in leases {
        tracing::info!(lease = %lease.id, "deleting a lease left by a pull that did not finish");
        if let Err(err) = delete_lease(containerd, &lease.id).await {
            tracing::warn!(lease = %lease.id, error = %err, "deleting a stale lease failed");
        }
    }
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::time::Instant::now().elapsed().as_nanos() as u64);
    hasher.finish() as u32
}

/// `t` as RFC 3339 in UTC (containerd parses the expire label with Go's RFC3339).
fn httpdate_rfc3339(t: std::time::Duration) -> String {
    let secs = t.as_secs() as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// The size and labels of a blob in the content store, if it is there.
pub async fn blob_info(
    containerd: &Containerd,
    digest: &str,
) -> Result<Option<containerd_client::services::v1::Info>, ContainerdError> {
    match ContentClient::new(containerd.channel()).info(InfoRequest { digest: digest.to_string() }).await {
        Ok(response) => Ok(response.into_inner().info),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(ContainerdError::call("content info", s)),
    }
}

/// Sets `labels` on a stored blob (other labels stay).
pub async fn set_labels(
    containerd: &Containerd,
    lease: Option<&str>,
    digest: &str,
    labels: HashMap<String, String>,
) -> Result<(), ContainerdError> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let info = containerd_client::services::v1::Info { digest: digest.to_string(), labels, ..Default::default() };
    let message = UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths }) };
    let request = match lease {
        Some(lease) => leased(message, lease),
        None => Request::new(message),
    };
    ContentClient::new(containerd.channel())
        .update(request)
        .await
        .map_err(|s| ContainerdError::call("labelling content", s))?;
    Ok(())
}

/// A whole blob read from the content store (manifests and configs: small).
pub async fn read_blob(containerd: &Containerd, digest: &str) -> Result<Vec<u8>, ContainerdError> {
    let mut stream = ContentClient::new(containerd.channel())
        .read(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 })
        .await
        .map_err(|s| ContainerdError::call("reading content", s))?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| ContainerdError::call("reading content", s))?;
        data.extend_from_slice(&chunk.data);
    }
    Ok(data)
}

/// How opening an ingest ended.
pub enum Opened {
    /// Write from `offset` (bytes a killed earlier try left are kept).
    Ingest(Box<Ingest>),
    /// The blob is already in the store.
    Exists,
    /// Another writer (a concurrent pull here or in another replica) holds the ingest.
    Locked,
}

/// An open ingest: one `content.Write` stream.
pub struct Ingest {
    sender: mpsc::Sender<WriteContentRequest>,
    responses: Streaming<WriteContentResponse>,
    reference: String,
    total: i64,
    expected: String,
    pub offset: i64,
    /// Writes sent whose answers are not read yet.
    in_flight: usize,
}

/// Writes in flight before waiting for containerd's answers.
const MAX_IN_FLIGHT: usize = 4;

impl Ingest {
    /// Opens the ingest `reference` for a blob of `total` bytes with digest `expected`.
    pub async fn open(
        containerd: &Containerd,
        lease: &str,
        reference: &str,
        total: i64,
        expected: &str,
    ) -> Result<Opened, ContainerdError> {
        let (sender, receiver) = mpsc::channel(MAX_IN_FLIGHT + 2);
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.to_string(),
            total,
            expected: expected.to_string(),
            ..Default::default()
        };
        if sender.send(stat).await.is_err() {
            return Err(ContainerdError::call("content write", Status::internal("request stream closed")));
        }
        let request = leased(ReceiverStream::new(receiver), lease);
        let mut responses = match ContentClient::new(containerd.channel()).write(request).await {
            Ok(response) => response.into_inner(),
            Err(s) => return classify_open(s),
        };
        let first = match responses.next().await {
            Some(Ok(first)) => first,
            Some(Err(s)) => return classify_open(s),
            None => return Err(ContainerdError::call("content write", Status::unknown("no answer to stat"))),
        };
        Ok(Opened::Ingest(Box::new(Ingest {
            sender,
            responses,
            reference: reference.to_string(),
            total,
            expected: expected.to_string(),
            offset: first.offset,
            in_flight: 0,
        })))
    }

    /// Appends `data` at the current offset.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), ContainerdError> {
        let len = data.len() as i64;
        let message = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.expected.clone(),
            offset: self.offset,
            data,
            labels: HashMap::new(),
        };
        self.send(message).await?;
        self.offset += len;
        self.in_flight += 1;
        while self.in_flight >= MAX_IN_FLIGHT {
            self.answer().await?;
        }
        Ok(())
    }

    /// Restarts the ingest at byte 0 (the source could not resume).
    pub async fn restart(&mut self) -> Result<(), ContainerdError> {
        self.offset = 0;
        self.write(Vec::new()).await
    }

    /// Commits: containerd checks size and digest; a mismatch answers FAILED_PRECONDITION
    /// (or INVALID_ARGUMENT) and nothing is stored.
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<(), ContainerdError> {
        let message = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.expected.clone(),
            offset: self.offset,
            data: Vec::new(),
            labels,
        };
        self.send(message).await?;
        self.in_flight += 1;
        while self.in_flight > 0 {
            self.answer().await?;
        }
        Ok(())
    }

    async fn send(&mut self, message: WriteContentRequest) -> Result<(), ContainerdError> {
        if self.sender.send(message).await.is_err() {
            // The stream ended: containerd's answer says why.
            return match self.responses.next().await {
                Some(Err(s)) => Err(ContainerdError::call("content write", s)),
                _ => Err(ContainerdError::call("content write", Status::unknown("write stream closed"))),
            };
        }
        Ok(())
    }

    async fn answer(&mut self) -> Result<(), ContainerdError> {
        match self.responses.next().await {
            Some(Ok(_)) => {
                self.in_flight -= 1;
                Ok(())
            }
            Some(Err(s)) if s.code() == Code::AlreadyExists => {
                self.in_flight = 0;
                Ok(())
            }
            Some(Err(s)) => Err(ContainerdError::call("content write", s)),
            None => Err(ContainerdError::call("content write", Status::unknown("write stream ended early"))),
        }
    }
}

fn classify_open(status: Status) -> Result<Opened, ContainerdError> {
    match status.code() {
        Code::AlreadyExists => Ok(Opened::Exists),
        Code::Unavailable if status.message().contains("locked") => Ok(Opened::Locked),
        _ => Err(ContainerdError::call("opening a content ingest", status)),
    }
}

/// Drops an ingest and the bytes it holds.
pub async fn abort(containerd: &Containerd, reference: &str) {
    if let Err(s) = ContentClient::new(containerd.channel()).abort(AbortRequest { r#ref: reference.to_string() }).await
        && s.code() != Code::NotFound
    {
        tracing::warn!(reference, error = %s.message(), "aborting a content ingest failed");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::httpdate_rfc3339(std::time::Duration::from_secs(0)), "1970-01-01T00:00:00Z");
        assert_eq!(super::httpdate_rfc3339(std::time::Duration::from_secs(1_700_000_000)), "2023-11-14T22:13:20Z");
    }
}
