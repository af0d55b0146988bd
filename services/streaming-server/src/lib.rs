//! crisp's streaming server: the CRI Exec, Attach and PortForward RPCs (`service`) answer URLs
//! with single-use tokens (`tokens`) on an HTTP server (`server`) where the client upgrades to
//! SPDY/3.1 or WebSocket (`upgrade`, `wsbytes`) and the session runs: `portforward` connects
//! to ports inside a pod's network namespace (`netns`). Pods and containers are read from the
//! runtime service's records in containerd (`lookup`).

pub mod attach;
pub mod error;
pub mod exec;
pub mod lookup;
pub mod metrics;
pub mod netns;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod service;
pub mod tokens;
pub mod upgrade;
pub mod wsbytes;
