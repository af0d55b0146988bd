//! The proxy's forwarding, against backends this test serves on temp sockets: what passes
//! through (streams, large messages, metadata, trailers, status codes), deadlines, and a backend
//! that is down. The e2e tests in `tests/` do the same against the real crisp services.

use crisp_config::ProxyConfig;
use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use crisp_proto::cri::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use crisp_proto::cri::*;
use crisp_proxy::{Backends, Scope};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Code, Request, Response, Status};

/// A RuntimeService backend whose answers show what reached it.
#[derive(Clone, Default)]
struct Backend {
    /// The `grpc-timeout` header of the last call, as the backend saw it.
    seen_timeout: Arc<Mutex<Option<String>>>,
}

/// The RPCs the test backend answers; every other one is `UNIMPLEMENTED`.
#[tonic::async_trait]
impl RuntimeService for Backend {
    async fn version(&self, request: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        let timeout = request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).map(String::from);
        *self.seen_timeout.lock().unwrap() = timeout;
        match request.get_ref().version.as_str() {
            // Slow: for deadline tests.
            "slow" => tokio::time::sleep(Duration::from_secs(30)).await,
            // An error with metadata in the trailers.
            "fail" => {
                let mut status =
                    Status::with_details(Code::FailedPrecondition, "backend says no", vec![1, 2, 3].into());
                status.metadata_mut().insert("x-why", "because".parse().unwrap());
                return Err(status);
            }
            _ => {}
        }
        let mut response = Response::new(VersionResponse {
            version: request.get_ref().version.clone(),
            runtime_name: "test-backend".into(),
            runtime_version: "1".into(),
            runtime_api_version: "v1".into(),
        });
        response.metadata_mut().insert("x-backend", "runtime".parse().unwrap());
        Ok(response)
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // A large response: 3 MiB of info.
        let mut info = std::collections::HashMap::new();
        info.insert("big".to_string(), "x".repeat(3 << 20));
        Ok(Response::new(StatusResponse { status: None, info, runtime_handlers: vec![], features: None }))
    }

    async fn get_container_events(
        &self,
        _request: Request<GetEventsRequest>,
    ) -> Result<Response<BoxStream<ContainerEventResponse>>, Status> {
        let events = tokio_stream::iter(
            (0..3).map(|i| Ok(ContainerEventResponse { container_id: format!("c{i}"), ..Default::default() })),
        );
        // Three events, then the stream stays open until the caller's deadline.
        let stream = events.chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    proxy: PathBuf,
    backend: Backend,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

async fn serve_backend(socket: &Path, backend: Backend) {
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(backend))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
}

/// The proxy with the runtime backend above; the image and streaming sockets have nothing.
async fn setup() -> Setup {
    let dir = tempfile::Builder::new().prefix("crisp-proxy-").tempdir_in("/tmp").unwrap();
    let backend = Backend::default();
    serve_backend(&dir.path().join("runtime.sock"), backend.clone()).await;
    let config = ProxyConfig {
        socket: dir.path().join("proxy.sock"),
        runtime_endpoint: dir.path().join("runtime.sock"),
        streaming_endpoint: dir.path().join("streaming.sock"),
        image_endpoints: vec![dir.path().join("image.sock")],
        ..ProxyConfig::default()
    };
    let listener = tokio::net::UnixListener::bind(&config.socket).unwrap();
    let shutdown = tokio::sync::watch::channel(false);
    tokio::spawn(crisp_proxy::serve(
        listener,
        crisp_proxy::stack(&Backends::from_config(&config), Scope::Cri),
        shutdown.1,
    ));
    Setup { proxy: config.socket.clone(), _dir: dir, backend, _shutdown: shutdown.0 }
}

fn client(socket: &Path) -> RuntimeServiceClient<tonic::transport::Channel> {
    RuntimeServiceClient::new(crisp_grpc_server::unix_channel(socket, Duration::from_secs(2)))
        .max_decoding_message_size(16 << 20)
}

#[tokio::test]
async fn unary_calls_pass_through_with_metadata() {
    let s = setup().await;
    let response = client(&s.proxy).version(VersionRequest { version: "0.1.0".into() }).await.unwrap();
    assert_eq!(response.metadata().get("x-backend").unwrap(), "runtime");
    assert_eq!(response.get_ref().runtime_name, "test-backend");
    assert_eq!(response.get_ref().version, "0.1.0");
}

#[tokio::test]
async fn error_status_details_and_trailers_pass_through() {
    let s = setup().await;
    let status = client(&s.proxy).version(VersionRequest { version: "fail".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "backend says no");
    assert_eq!(status.details(), &[1, 2, 3]);
    assert_eq!(status.metadata().get("x-why").unwrap(), "because");
}

#[tokio::test]
async fn large_responses_pass_through() {
    let s = setup().await;
    let response = client(&s.proxy).status(StatusRequest { verbose: true }).await.unwrap();
    assert_eq!(response.get_ref().info["big"].len(), 3 << 20);
}

#[tokio::test]
async fn server_streams_pass_through_and_end_at_the_deadline() {
    let s = setup().await;
    let mut request = Request::new(GetEventsRequest {});
    request.set_timeout(Duration::from_millis(800));
    let started = Instant::now();
    let mut stream = client(&s.proxy).get_container_events(request).await.unwrap().into_inner();
    let mut ids = vec![];
    let end = loop {
        match stream.next().await {
            Some(Ok(event)) => ids.push(event.container_id),
            Some(Err(status)) => break Some(status),
            None => break None,
        }
    };
    assert_eq!(ids, ["c0", "c1", "c2"]);
    let status = end.expect("the stream must end with a status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(5), "took {took:?}");
}

/// One gRPC call made with hyper alone, so that no client-side deadline handling hides what
/// the proxy answers. Returns the response's `grpc-status` (headers or trailers).
async fn raw_call(socket: &Path, path: &str, message: impl prost::Message, timeout: &str) -> String {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    let request = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().unwrap().to_string();
    }
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().expect("no trailers").clone();
    trailers.get("grpc-status").unwrap().to_str().unwrap().to_string()
}

#[tokio::test]
async fn the_deadline_is_forwarded_and_kept() {
    let s = setup().await;
    let started = Instant::now();
    let status =
        raw_call(&s.proxy, "/runtime.v1.RuntimeService/Version", VersionRequest { version: "slow".into() }, "500m")
            .await;
    assert_eq!(status, (Code::DeadlineExceeded as i32).to_string());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(5), "took {took:?}");
    // The backend saw the caller's deadline, unchanged.
    let seen = s.backend.seen_timeout.lock().unwrap().clone().expect("no grpc-timeout reached the backend");
    assert_eq!(seen, "500m");
}

#[tokio::test]
async fn a_backend_that_is_down_answers_unavailable_naming_it_at_once() {
    let s = setup().await;
    let started = Instant::now();
    let channel = crisp_grpc_server::unix_channel(&s.proxy, Duration::from_secs(2));
    let mut exec = RuntimeServiceClient::new(channel.clone());
    let status = exec.exec(ExecRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("streaming server"), "{}", status.message());
    assert!(status.message().contains("streaming.sock"), "{}", status.message());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());

    let mut images = crisp_proto::cri::image_service_client::ImageServiceClient::new(channel);
    let status = images.list_images(ListImagesRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("image service"), "{}", status.message());
}

#[tokio::test]
async fn a_backend_that_comes_back_answers_again() {
    let s = setup().await;
    let mut exec = client(&s.proxy);
    assert_eq!(exec.exec(ExecRequest::default()).await.unwrap_err().code(), Code::Unavailable);
    // The streaming server starts.
    serve_backend(&s._dir.path().join("streaming.sock"), Backend::default()).await;
    let status = exec.exec(ExecRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn an_unknown_path_is_unimplemented() {
    let s = setup().await;
    let channel = crisp_grpc_server::unix_channel(&s.proxy, Duration::from_secs(2));
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/runtime.v1alpha2.RuntimeService/Version");
    let codec = tonic_prost::ProstCodec::<VersionRequest, VersionResponse>::default();
    let status = grpc.unary(Request::new(VersionRequest::default()), path, codec).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains("runtime.v1alpha2.RuntimeService/Version"), "{}", status.message());
}

/// A Version call as the router hands it on: head and whole framed message.
fn version_call(version: &str, timeout: Option<&'static str>) -> crisp_proxy::Call {
    use prost::Message;
    let encoded = VersionRequest { version: version.into() }.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    let mut call = http::Request::post("http://localhost/runtime.v1.RuntimeService/Version")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(bytes::Bytes::from(framed))
        .unwrap();
    if let Some(timeout) = timeout {
        call.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static(timeout));
    }
    call
}

fn grpc_status_of(response: &crisp_proxy::Response) -> Option<String> {
    response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn only_an_unreachable_replica_leaves_the_rotation_never_a_deadline() {
    use tower::{Layer, ServiceExt};
    let dir = tempfile::Builder::new().prefix("crisp-pool-").tempdir_in("/tmp").unwrap();
    serve_backend(&dir.path().join("live.sock"), Backend::default()).await;
    let pool = crisp_proxy::ImagePool::new(vec![
        crisp_proxy::Backend::new("replica 0", &dir.path().join("gone.sock"), Duration::from_secs(1)),
        crisp_proxy::Backend::new("replica 1", &dir.path().join("live.sock"), Duration::from_secs(1)),
    ]);
    assert_eq!(pool.healthy_replicas(), 2);
    // Every call is answered, whichever replica the rotation starts at; the gone one leaves.
    for _ in 0..4 {
        let response = pool.call(version_call("ok", None)).await.unwrap();
        assert_eq!(grpc_status_of(&response), None, "a trailers-only error: {response:?}");
    }
    assert_eq!(pool.healthy_replicas(), 1);

    // Calls whose deadline passes at the live replica: DEADLINE_EXCEEDED, and it stays.
    let service = crisp_proxy::DeadlineLayer.layer(pool.clone());
    for _ in 0..4 {
        let status = service.clone().oneshot(version_call("slow", Some("50m"))).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
    assert_eq!(pool.healthy_replicas(), 1);
    let response = service.oneshot(version_call("ok", Some("5S"))).await.unwrap();
    assert_eq!(grpc_status_of(&response), None);
}
