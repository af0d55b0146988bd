//! One CRI call is one trace: the proxy continues the caller's W3C trace context and hands it
//! on, the backend's span is the proxy span's child, and both reach an OTLP collector.

use crisp_proto::cri::VersionRequest;
use crisp_testkit::otlp::{Collector, hex};
use crisp_testkit::{Stack, StackOptions};
use std::time::{Duration, Instant};

// Multi-threaded: the collector must keep answering while the stack, dropped at the end,
// waits for the services to flush their last spans to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_backend_spans_form_one_trace() {
    let (collector, endpoint) = Collector::start().await.unwrap();

    let stack = Stack::start_with(StackOptions {
        env: vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint), ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into())],
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
            let ours: Vec<_> = collector.trace(trace_id).into_iter().filter(|s| s.span.name == name).collect();
            let proxy = ours.iter().find(|s| s.service.contains("crisp-proxy"));
            let backend = ours.iter().find(|s| s.service.contains("crisp-runtime"));
            if let (Some(proxy), Some(backend)) = (proxy, backend) {
                break (proxy.span.clone(), backend.span.clone());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "spans of trace {trace_id} not all exported: {:?}",
            collector
                .spans()
                .iter()
                .map(|s| (s.service.clone(), s.span.name.clone(), s.trace_id()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hex(&proxy.parent_span_id), caller_span, "the proxy span continues the caller's span");
    assert_eq!(backend.parent_span_id, proxy.span_id, "the backend span is the proxy span's child");
    assert_eq!(proxy.kind, crisp_testkit::otlp::SpanKind::Server as i32);
}
