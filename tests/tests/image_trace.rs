//! A pull is part of the PullImage call's trace: the `pull` span (and its `blob` and `unpack`
//! spans), though the pull runs in a task of its own, share the trace the call continues.

mod image_support;

use crisp_proto::cri::PullImageRequest;
use crisp_testkit::images::Format;
use crisp_testkit::registry::Registry;
use crisp_testkit::{Stack, StackOptions};
use image_support::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The trace the test's PullImage call carries.
const TRACE_ID: &str = "5cf92f3577b34da6a3ce929d0e0e4737";

/// An OTLP/gRPC trace receiver (as in `telemetry.rs`) keeping the names of the spans of
/// [`TRACE_ID`] it is sent, and counting the others.
#[derive(Clone, Default)]
struct Collector {
    names: Arc<Mutex<Vec<String>>>,
    others: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut names = self.names.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
                if hex(&span.trace_id) == TRACE_ID {
                    names.push(span.name);
                } else {
                    self.others.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// Multi-threaded: the collector must keep answering while the stack flushes its spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_spans_belong_to_the_pull_image_trace() -> anyhow::Result<()> {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()).max_decoding_message_size(64 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let registry = Registry::start().await?;
    let image = busybox(Format::Oci)?;
    let name = registry.push("test/traced", "v1", &image).await?;
    let stack = Stack::start_with(StackOptions {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://127.0.0.1:{port}")),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            // The services export every span, their HTTP/2 stacks' too (tens of thousands):
            // a queue big enough that none of those we look for is dropped.
            ("OTEL_BSP_MAX_QUEUE_SIZE".into(), "1000000".into()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE".into(), "8192".into()),
        ],
        ..Default::default()
    })
    .await?;

    let mut request = tonic::Request::new(PullImageRequest { image: spec(&name), auth: None, sandbox_config: None });
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01").parse()?);
    stack.image_client().pull_image(request).await?;

    let started = Instant::now();
    loop {
        let names = collector.names.lock().unwrap().clone();
        let has = |name: &str| names.iter().any(|n| n == name);
        if has("runtime.v1.ImageService/PullImage") && has("pull") && has("blob") && has("unpack") {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the pull's spans are not all in trace {TRACE_ID}: {names:?} ({} spans of other traces)",
            collector.others.load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
