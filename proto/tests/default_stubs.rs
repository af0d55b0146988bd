//! A service that implements no RPC answers each one `UNIMPLEMENTED`, naming the RPC in the
//! wording every crisp service uses (`crisp_errors::unimplemented`).

use crisp_proto::cri::image_service_server::ImageService;
use crisp_proto::cri::runtime_service_server::RuntimeService;
use crisp_proto::cri::*;
use tonic::{Code, Request};

struct Nothing;

impl RuntimeService for Nothing {}
impl ImageService for Nothing {}

fn assert_unimplemented(status: tonic::Status, rpc: &str) {
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(status.message(), crisp_errors::unimplemented(rpc).message());
    assert_eq!(status.message(), format!("{rpc} is not implemented by crisp yet"));
}

#[tokio::test]
async fn every_rpc_a_service_does_not_build_is_unimplemented_and_named() {
    let status = Nothing.version(Request::new(VersionRequest::default())).await.unwrap_err();
    assert_unimplemented(status, "Version");
    let status = Nothing
        .update_pod_sandbox_resources(Request::new(UpdatePodSandboxResourcesRequest::default()))
        .await
        .unwrap_err();
    assert_unimplemented(status, "UpdatePodSandboxResources");
    let Err(status) = Nothing.get_container_events(Request::new(GetEventsRequest::default())).await else {
        panic!("GetContainerEvents answered a stream");
    };
    assert_unimplemented(status, "GetContainerEvents");
    let Err(status) = Nothing.stream_containers(Request::new(StreamContainersRequest::default())).await else {
        panic!("StreamContainers answered a stream");
    };
    assert_unimplemented(status, "StreamContainers");
    let status = Nothing.runtime_config(Request::new(RuntimeConfigRequest::default())).await.unwrap_err();
    assert_unimplemented(status, "RuntimeConfig");

    let status = Nothing.pull_image(Request::new(PullImageRequest::default())).await.unwrap_err();
    assert_unimplemented(status, "PullImage");
    let Err(status) = Nothing.stream_images(Request::new(StreamImagesRequest::default())).await else {
        panic!("StreamImages answered a stream");
    };
    assert_unimplemented(status, "StreamImages");
}
