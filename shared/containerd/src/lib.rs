//! crisp's containerd layer: the one way every crisp service talks to containerd.
//!
//! [`Containerd`] is one gRPC channel to containerd's socket. Every call made through it
//! carries the configured containerd namespace and the current span's trace context. The
//! channel connects lazily and reconnects by itself when containerd restarts, with backoff
//! (100 ms doubling to 2 s) while containerd is away: calls in between fail at once with
//! `UNAVAILABLE`. [`Containerd::wait_ready`] waits for containerd at start.
//!
//! - typed accessors ([`Containerd::leases`], [`Containerd::content`], [`Containerd::snapshots`],
//!   [`Containerd::images`], [`Containerd::containers`], [`Containerd::tasks`],
//!   [`Containerd::events`], [`Containerd::introspection`], [`Containerd::diff`],
//!   [`Containerd::version`], [`Containerd::namespaces`]) answer containerd-client's gRPC
//!   clients on that channel: no service builds a containerd client itself;
//! - thin typed calls where crisp needs more than the raw RPC: [`lease`] (the [`Lease`]
//!   guard), [`content`] (blobs, ingests), [`snapshots`] (prepare, commit, diff apply,
//!   usage), [`images`] (image records), [`containers`] (container records), [`tasks`]
//!   (create, start, kill, wait, delete), [`events`] (task exits and OOM kills),
//!   [`Containerd::plugin_root`];
//! - [`labels`]: the label names containerd, its CRI plugin and crisp use;
//! - [`metrics`]: every call's latency by containerd API, timed on the channel;
//! - [`error`]: the one place containerd's answers become crisp's errors.

pub mod containers;
pub mod content;
pub mod error;
pub mod events;
pub mod images;
pub mod labels;
pub mod lease;
pub mod metrics;
pub mod snapshots;
pub mod tasks;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;

pub use containerd_client;
pub use content::{Ingest, Opened};
pub use error::ContainerdError;
pub use images::ImageRecord;
pub use lease::{Held, Lease, LeaseId, LeaseInfo, leased};

/// The metadata key containerd reads the namespace from.
const NAMESPACE_KEY: &str = "containerd-namespace";

/// Adds the namespace and the trace context to every call.
#[derive(Clone)]
pub struct CallMetadata {
    namespace: MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for CallMetadata {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(NAMESPACE_KEY, self.namespace.clone());
        crisp_telemetry::propagation::inject_current(request.metadata_mut());
        Ok(request)
    }
}

/// The channel every containerd client is built on: namespace and trace context on every call,
/// each timed ([`metrics`]).
pub type Channel = InterceptedService<metrics::Timed<tonic::transport::Channel>, CallMetadata>;

/// A connection to containerd in one namespace. Cheap to clone: clones share the channel.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    /// The channel without namespace, for [`Containerd::in_namespace`].
    raw: tonic::transport::Channel,
    address: PathBuf,
    namespace: String,
}

/// containerd's version and revision.
#[derive(Debug, Clone)]
pub struct ContainerdVersion {
    pub version: String,
    pub revision: String,
}

impl Containerd {
    /// Connects as `config` says and waits (at most `config.connect_timeout`) until containerd
    /// answers: how a service starts.
    pub async fn connect_ready(config: &crisp_config::ContainerdConfig) -> Result<Self, ContainerdError> {
        let containerd = Containerd::connect(&config.address, &config.namespace)?;
        let version = containerd.wait_ready(config.connect_timeout).await?;
        tracing::info!(containerd = %version.version, namespace = %containerd.namespace(), "connected to containerd");
        Ok(containerd)
    }

    /// Prepares a connection; nothing is dialled until the first call.
    pub fn connect(address: &Path, namespace: &str) -> Result<Self, ContainerdError> {
        let namespace_value =
            MetadataValue::try_from(namespace).map_err(|_| ContainerdError::Namespace(namespace.to_string()))?;
        let channel = crisp_grpc_dial::unix_channel_with_backoff(address, Duration::from_secs(5), "containerd");
        Ok(Self {
            channel: InterceptedService::new(
                metrics::Timed::new(channel.clone()),
                CallMetadata { namespace: namespace_value },
            ),
            raw: channel,
            address: address.to_path_buf(),
            namespace: namespace.to_string(),
        })
    }

    /// The same containerd in another namespace (tests compare crisp's work with `ctr`'s).
    pub fn in_namespace(&self, namespace: &str) -> Result<Self, ContainerdError> {
        let namespace_value =
            MetadataValue::try_from(namespace).map_err(|_| ContainerdError::Namespace(namespace.to_string()))?;
        Ok(Self {
            channel: InterceptedService::new(
                metrics::Timed::new(self.raw.clone()),
                CallMetadata { namespace: namespace_value },
            ),
            raw: self.raw.clone(),
            address: self.address.clone(),
            namespace: namespace.to_string(),
        })
    }

    /// The namespaced, traced channel, for a containerd API without an accessor here.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel())
    }

    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel())
    }

    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel())
    }

    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel())
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel())
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel())
    }

    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel())
    }

    pub fn introspection(&self) -> IntrospectionClient<Channel> {
        IntrospectionClient::new(self.channel())
    }

    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel())
    }

    pub fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel())
    }

    pub fn namespaces(&self) -> NamespacesClient<Channel> {
        NamespacesClient::new(self.channel())
    }

    /// Asks containerd its version: the cheapest proof that it answers.
    pub async fn server_version(&self) -> Result<ContainerdVersion, ContainerdError> {
        let response =
            self.version().version(()).await.map_err(|source| ContainerdError::call("version", source))?.into_inner();
        Ok(ContainerdVersion { version: response.version, revision: response.revision })
    }

    /// The root directory containerd's plugin `kind`/`id` exports (introspection), or `""`.
    /// E.g. `("io.containerd.snapshotter.v1", "overlayfs")`, `("io.containerd.content.v1",
    /// "content")`.
    pub async fn plugin_root(&self, kind: &str, id: &str) -> Result<String, ContainerdError> {
        use containerd_client::services::v1::PluginsRequest;
        let filter = format!("type=={kind},id=={id}");
        let plugins = self
            .introspection()
            .plugins(PluginsRequest { filters: vec![filter] })
            .await
            .map_err(|s| ContainerdError::call("introspecting plugins", s))?
            .into_inner()
            .plugins;
        Ok(plugins.into_iter().find_map(|p| p.exports.get("root").cloned()).unwrap_or_default())
    }

    /// Waits until containerd answers, retrying with backoff (100 ms doubling to 2 s), for at
    /// most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<ContainerdVersion, ContainerdError> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.server_version().await {
                Ok(version) => return Ok(version),
                Err(ContainerdError::Call { source, .. }) if started.elapsed() + delay < timeout => {
                    tracing::info!(address = %self.address.display(), error = %source.message(), ?delay, "waiting for containerd");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(ContainerdError::Call { source, .. }) => {
                    return Err(ContainerdError::NotReady {
                        address: self.address.clone(),
                        waited: started.elapsed(),
                        source,
                    });
                }
                Err(other) => return Err(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crisp_errors::GrpcError;

    #[tokio::test]
    async fn a_containerd_that_is_not_there_is_unavailable() {
        let dir = std::env::temp_dir().join(format!("crisp-containerd-test-{}", std::process::id()));
        let containerd = Containerd::connect(&dir.join("absent.sock"), "crisp-test").unwrap();
        let err = containerd.server_version().await.unwrap_err();
        assert!(err.is_transport(), "{err:?}");
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
