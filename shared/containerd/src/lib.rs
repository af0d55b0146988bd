//! crisp's connection to containerd.
//!
//! [`Containerd`] holds one gRPC channel to containerd's socket. Every call made through
//! [`Containerd::channel`] carries the configured containerd namespace and the current span's
//! trace context. The channel connects lazily and reconnects by itself when containerd
//! restarts, with backoff (100 ms doubling to 2 s) while containerd is away: calls in between
//! fail at once with `UNAVAILABLE`. [`Containerd::wait_ready`] waits for containerd at start.

use containerd_client::services::v1::version_client::VersionClient;
use crisp_errors::GrpcError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;

pub use containerd_client;

/// The metadata key containerd reads the namespace from.
const NAMESPACE_KEY: &str = "containerd-namespace";

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd at {address} did not answer within {waited:?}: {source}")]
    NotReady { address: PathBuf, waited: Duration, source: tonic::Status },
    #[error("containerd namespace `{0}` is not valid gRPC metadata")]
    Namespace(String),
    #[error("containerd {operation}: {source}")]
    Call { operation: &'static str, source: tonic::Status },
}

impl ContainerdError {
    /// A failed containerd call, named by what crisp was doing.
    pub fn call(operation: &'static str, source: tonic::Status) -> Self {
        ContainerdError::Call { operation, source }
    }
}

impl GrpcError for ContainerdError {
    fn code(&self) -> Code {
        match self {
            ContainerdError::NotReady { .. } => Code::Unavailable,
            ContainerdError::Namespace(_) => Code::InvalidArgument,
            ContainerdError::Call { source, .. } => match source.code() {
                // containerd's own codes carry over; a broken connection is UNAVAILABLE.
                Code::Unknown if source.message().contains("transport") => Code::Unavailable,
                code => code,
            },
        }
    }
}

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

/// The channel every containerd client is built on.
pub type Channel = InterceptedService<tonic::transport::Channel, CallMetadata>;

/// A connection to containerd in one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
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
            channel: InterceptedService::new(channel, CallMetadata { namespace: namespace_value }),
            address: address.to_path_buf(),
            namespace: namespace.to_string(),
        })
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    /// Asks containerd its version: the cheapest proof that it answers.
    pub async fn version(&self) -> Result<ContainerdVersion, ContainerdError> {
        let response = VersionClient::new(self.channel())
            .version(())
            .await
            .map_err(|source| ContainerdError::call("version", source))?
            .into_inner();
        Ok(ContainerdVersion { version: response.version, revision: response.revision })
    }

    /// Waits until containerd answers, retrying with backoff (100 ms doubling to 2 s), for at
    /// most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<ContainerdVersion, ContainerdError> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.version().await {
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
