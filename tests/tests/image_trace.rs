//! A pull is part of the PullImage call's trace: the `pull` span (and its `blob` and `unpack`
//! spans), though the pull runs in a task of its own, share the trace the call continues.

mod image_support;

use crisp_proto::cri::PullImageRequest;
use crisp_testkit::images::Format;
use crisp_testkit::otlp::Collector;
use crisp_testkit::registry::Registry;
use crisp_testkit::{Stack, StackOptions};
use image_support::*;
use std::time::{Duration, Instant};

/// The trace the test's PullImage call carries.
const TRACE_ID: &str = "5cf92f3577b34da6a3ce929d0e0e4737";

// Multi-threaded: the collector must keep answering while the stack flushes its spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_spans_belong_to_the_pull_image_trace() -> anyhow::Result<()> {
    let (collector, endpoint) = Collector::start().await?;
    let registry = Registry::start().await?;
    let image = busybox(Format::Oci)?;
    let name = registry.push("test/traced", "v1", &image).await?;
    let stack = Stack::start_with(StackOptions {
        env: vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint), ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into())],
        ..Default::default()
    })
    .await?;

    let mut request = tonic::Request::new(PullImageRequest { image: spec(&name), auth: None, sandbox_config: None });
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01").parse()?);
    stack.image_client().pull_image(request).await?;

    let started = Instant::now();
    loop {
        let names: Vec<String> = collector.trace(TRACE_ID).into_iter().map(|s| s.span.name).collect();
        let has = |name: &str| names.iter().any(|n| n == name);
        if has("runtime.v1.ImageService/PullImage") && has("pull") && has("blob") && has("unpack") {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the pull's spans are not all in trace {TRACE_ID}: {names:?} ({} spans in all)",
            collector.spans().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
