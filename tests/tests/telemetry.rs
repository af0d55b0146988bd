//! One CRI call is one trace: the proxy continues the caller's W3C trace context and hands it
//! on, the backend's span is the proxy span's child, and both reach an OTLP collector.

use crisp_proto::cri::VersionRequest;
use crisp_testkit::{Stack, StackOptions};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A real OTLP/gRPC trace receiver: keeps every span it is sent, with its service's name.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// Multi-threaded: the collector must keep answering while the stack, dropped at the end,
// waits for the services to flush their last spans to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_backend_spans_form_one_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let stack = Stack::start_with(StackOptions {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://127.0.0.1:{port}")),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ],
        ..Default::default()
    })
    .await
    .unwrap();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(VersionRequest::default());
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-{caller_span}-01").parse().unwrap());
    stack.runtime_client().version(request).await.unwrap();

    let name = "runtime.v1.RuntimeService/Version";
    let started = Instant::now();
    let (proxy, backend) = loop {
        {
            let spans = collector.spans.lock().unwrap();
            let ours: Vec<_> = spans.iter().filter(|(_, s)| hex(&s.trace_id) == trace_id && s.name == name).collect();
            let proxy = ours.iter().find(|(service, _)| service.contains("crisp-proxy"));
            let backend = ours.iter().find(|(service, _)| service.contains("crisp-runtime"));
            if let (Some(proxy), Some(backend)) = (proxy, backend) {
                break (proxy.1.clone(), backend.1.clone());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "spans of trace {trace_id} not all exported: {:?}",
            collector.spans.lock().unwrap().iter().map(|(svc, s)| (svc.clone(), s.name.clone(), hex(&s.trace_id))).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hex(&proxy.parent_span_id), caller_span, "the proxy span continues the caller's span");
    assert_eq!(backend.parent_span_id, proxy.span_id, "the backend span is the proxy span's child");
    assert_eq!(proxy.kind, opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32);
}
