//! The node stack through the proxy socket, as the kubelet sees it: Version and Status, each
//! service's calls reaching it, backends dying and coming back, image service replicas.

use crisp_proto::cri::image_service_client::ImageServiceClient;
use crisp_proto::cri::*;
use crisp_testkit::{Stack, StackOptions, cri_channel};
use std::time::{Duration, Instant};
use tonic::Code;

fn condition<'a>(status: &'a StatusResponse, kind: &str) -> &'a RuntimeCondition {
    let conditions = &status.status.as_ref().expect("Status has no RuntimeStatus").conditions;
    conditions.iter().find(|c| c.r#type == kind).unwrap_or_else(|| panic!("no {kind} condition in {conditions:?}"))
}

#[tokio::test]
async fn version_names_crisp_and_cri_v1() {
    let stack = Stack::start().await.unwrap();
    let version = stack.runtime_client().version(VersionRequest { version: "v1".into() }).await.unwrap().into_inner();
    assert_eq!(version.runtime_name, "crisp");
    assert_eq!(version.runtime_api_version, "v1");
    assert_eq!(version.version, "0.1.0");
    assert_eq!(version.runtime_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn status_reports_the_network_with_real_reasons() {
    let stack = Stack::start().await.unwrap();
    let mut runtime = stack.runtime_client();

    // No CNI configuration yet.
    let status = runtime.status(StatusRequest { verbose: false }).await.unwrap().into_inner();
    assert!(condition(&status, "RuntimeReady").status);
    let network = condition(&status, "NetworkReady");
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(network.message.contains("no CNI network configuration"), "{}", network.message);

    // A network whose plugin is not installed.
    let cni = stack.dir().join("cni");
    std::fs::write(
        cni.join("10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"test","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .unwrap();
    let status = runtime.status(StatusRequest { verbose: false }).await.unwrap().into_inner();
    let network = condition(&status, "NetworkReady");
    assert!(!network.status);
    assert!(network.message.contains("no-such-plugin"), "{}", network.message);

    // Debian's plugins.
    std::fs::write(
        cni.join("10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"test","plugins":[{"type":"bridge","bridge":"crisp0","ipam":{"type":"host-local","subnet":"10.88.0.0/16"}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
    )
    .unwrap();
    let status = runtime.status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    assert!(condition(&status, "NetworkReady").status, "{status:?}");
    let cni_info: serde_json::Value = serde_json::from_str(&status.info["cni"]).unwrap();
    assert_eq!(cni_info["network"], "test");
    let containerd: serde_json::Value = serde_json::from_str(&status.info["containerd"]).unwrap();
    assert_eq!(containerd["namespace"], "crisp");
}

#[tokio::test]
async fn status_follows_containerd_going_away_and_coming_back() {
    let mut stack = Stack::start().await.unwrap();
    let mut runtime = stack.runtime_client();

    stack.containerd_mut().kill();
    let status = runtime.status(StatusRequest { verbose: false }).await.unwrap().into_inner();
    let ready = condition(&status, "RuntimeReady");
    assert!(!ready.status);
    assert_eq!(ready.reason, "ContainerdNotReady");
    assert!(!ready.message.is_empty());

    // The runtime service reconnects by itself, within its backoff (at most 2 s).
    stack.containerd_mut().restart().await.unwrap();
    let restarted = Instant::now();
    loop {
        let status = runtime.status(StatusRequest { verbose: false }).await.unwrap().into_inner();
        if condition(&status, "RuntimeReady").status {
            break;
        }
        assert!(restarted.elapsed() < Duration::from_secs(5), "still not ready: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = stack.service_log("runtime").unwrap();
    assert!(log.contains("reconnected"), "{log}");
}

#[tokio::test]
async fn each_cri_call_reaches_its_service() {
    let mut stack = Stack::start().await.unwrap();
    let mut runtime = stack.runtime_client();

    // With the streaming server gone, only its calls fail, naming it.
    stack.kill_service("streaming").unwrap();
    let status = runtime.exec(ExecRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("streaming server"), "{}", status.message());
    for call in ["Attach", "PortForward"] {
        let status = if call == "Attach" {
            runtime.attach(AttachRequest::default()).await.unwrap_err()
        } else {
            runtime.port_forward(PortForwardRequest::default()).await.unwrap_err()
        };
        assert!(status.message().contains("streaming server"), "{call}: {}", status.message());
    }
    runtime.version(VersionRequest::default()).await.unwrap();
    stack.image_client().image_fs_info(ImageFsInfoRequest {}).await.unwrap();
    stack.start_service("streaming").await.unwrap();

    // With the runtime service gone, only its calls fail, naming it.
    stack.kill_service("runtime").unwrap();
    let status = runtime.version(VersionRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("runtime service"), "{}", status.message());
    let status = runtime.list_containers(ListContainersRequest::default()).await.unwrap_err();
    assert!(status.message().contains("runtime service"), "{}", status.message());
    let status = runtime.exec(ExecRequest::default()).await.unwrap_err();
    assert_ne!(status.code(), Code::Unavailable, "Exec must still reach the streaming server: {status:?}");
    stack.image_client().image_fs_info(ImageFsInfoRequest {}).await.unwrap();

    // With the image service gone, only image calls fail, naming it.
    stack.start_service("runtime").await.unwrap();
    stack.kill_service("image-0").unwrap();
    let status = stack.image_client().list_images(ListImagesRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("image service"), "{}", status.message());
    runtime.version(VersionRequest::default()).await.unwrap();
}

#[tokio::test]
async fn a_killed_backend_answers_unavailable_at_once_and_recovers() {
    let mut stack = Stack::start().await.unwrap();
    let mut runtime = stack.runtime_client();
    runtime.version(VersionRequest::default()).await.unwrap();

    stack.kill_service("runtime").unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let status = runtime.version(VersionRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(started.elapsed() < Duration::from_secs(2), "UNAVAILABLE took {:?}", started.elapsed());
    }

    stack.start_service("runtime").await.unwrap();
    // The same client connection to the proxy works again.
    let version = runtime.version(VersionRequest::default()).await.unwrap().into_inner();
    assert_eq!(version.runtime_name, "crisp");
}

#[tokio::test]
async fn image_calls_keep_answering_with_one_of_two_replicas_killed() {
    let mut stack = Stack::start_with(StackOptions { image_replicas: 2, ..Default::default() }).await.unwrap();
    let mut images = stack.image_client();
    for _ in 0..4 {
        images.list_images(ListImagesRequest::default()).await.unwrap();
    }

    stack.kill_service("image-0").unwrap();
    // Not one call fails: a call that finds its replica gone is tried on the other at once.
    for i in 0..10 {
        images.list_images(ListImagesRequest::default()).await.unwrap_or_else(|s| panic!("call {i}: {s:?}"));
    }
    // The health check takes the dead replica out of rotation.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let log = stack.service_log("proxy").unwrap();
    assert!(log.contains("taken out of rotation"), "{log}");

    // It comes back, and the other one can go.
    stack.start_service("image-0").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    stack.kill_service("image-1").unwrap();
    for i in 0..10 {
        images.list_images(ListImagesRequest::default()).await.unwrap_or_else(|s| panic!("call {i}: {s:?}"));
    }
    let log = stack.service_log("proxy").unwrap();
    assert!(log.contains("back in rotation"), "{log}");
}

#[tokio::test]
async fn the_image_socket_serves_only_the_image_service() {
    let stack = Stack::start_with(StackOptions { proxy_image_socket: true, ..Default::default() }).await.unwrap();
    let socket = stack.proxy_image_socket().unwrap();
    let mut images = ImageServiceClient::new(cri_channel(socket));
    images.list_images(ListImagesRequest::default()).await.unwrap();
    let mut runtime = crisp_proto::cri::runtime_service_client::RuntimeServiceClient::new(cri_channel(socket));
    let status = runtime.version(VersionRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn an_unknown_method_is_unimplemented() {
    let stack = Stack::start().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(cri_channel(stack.proxy_socket()));
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<VersionRequest, VersionResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/runtime.v1alpha2.RuntimeService/Version");
    let status = grpc.unary(tonic::Request::new(VersionRequest::default()), path, codec).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    // A method the runtime service does not build yet, or does not have (newer than its CRI
    // API), is the backend's UNIMPLEMENTED, not a proxy failure.
    for path in ["/runtime.v1.RuntimeService/StreamContainers", "/runtime.v1.RuntimeService/NoSuchMethod"] {
        let codec = tonic_prost::ProstCodec::<VersionRequest, VersionResponse>::default();
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(path);
        let status = grpc.unary(tonic::Request::new(VersionRequest::default()), path, codec).await.unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);
    }
}

#[tokio::test]
async fn rpcs_not_built_yet_answer_unimplemented_naming_themselves() {
    let stack = Stack::start().await.unwrap();
    let mut runtime = stack.runtime_client();
    let mut images = stack.image_client();
    let check = |status: tonic::Status, rpc: &str| {
        assert_eq!(status.code(), Code::Unimplemented, "{rpc}: {status:?}");
        assert_eq!(status.message(), format!("{rpc} is not implemented by crisp yet"));
    };

    // New in cri-api v0.33 to v0.36: the kubelet falls back (to the List RPCs) on UNIMPLEMENTED.
    check(runtime.stream_pod_sandboxes(StreamPodSandboxesRequest::default()).await.unwrap_err(), "StreamPodSandboxes");
    check(images.stream_images(StreamImagesRequest::default()).await.unwrap_err(), "StreamImages");
    // Each service answers for its own RPCs: the runtime service, the streaming server.
    check(runtime.stream_containers(StreamContainersRequest::default()).await.unwrap_err(), "StreamContainers");
}
