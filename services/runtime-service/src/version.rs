//! `Version`: the runtime's name and versions.

use crisp_proto::cri::VersionResponse;

/// The kubelet runtime API version this runtime implements (the value containerd answers).
const KUBELET_API_VERSION: &str = "0.1.0";

pub fn version() -> VersionResponse {
    VersionResponse {
        version: KUBELET_API_VERSION.into(),
        runtime_name: "crisp".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: "v1".into(),
    }
}
