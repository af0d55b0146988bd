//! The streaming server's side of `runtime.v1.RuntimeService`. It owns Exec, Attach and
//! PortForward, which a later piece of work builds; every other RPC belongs to the runtime
//! service and is never routed here. Each RPC not built answers `UNIMPLEMENTED` through the
//! generated default methods.

use crisp_proto::cri::runtime_service_server::RuntimeService;

pub struct Streaming;

impl RuntimeService for Streaming {}
