//! Prometheus metrics end to end: every service of a real stack serves `/metrics` on its
//! `<service>.metrics_address`; after real calls through the proxy (a pull from a registry, a
//! pod run with a CNI network, Version, an unknown method) the scraped text format shows the
//! proxy's, the image service's and the process counters and histograms moved for those calls.
//! The runtime service's own: after pods (one on a CNI network), a running container and one
//! killed for memory, its scrape shows pods and containers by state, the CNI ADD and DEL
//! latencies, the OOM kill and containerd's call latencies by API.
//! A busy or bad metrics address stops a service at start with a message naming it.

mod container_support;
mod image_support;
mod sandbox_support;

use crisp_proto::cri::*;
use crisp_testkit::registry::Registry;
use crisp_testkit::{Stack, StackOptions};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One scrape, parsed: `name{labels}` (labels as the text has them) to value, and the
/// families that have `# HELP` and `# TYPE` lines.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
    typed: HashMap<String, String>,
    helped: HashSet<String>,
}

impl Scrape {
    /// Parses the Prometheus text format (0.0.4): comments, then `series value` lines. Every
    /// sample must belong to a family with both a HELP and a TYPE line.
    fn parse(text: String) -> Scrape {
        let mut samples = HashMap::new();
        let mut typed = HashMap::new();
        let mut helped = HashSet::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a name and text");
                assert!(!help.trim().is_empty(), "empty help for {name}");
                helped.insert(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and a type");
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
                typed.insert(name.to_string(), kind.to_string());
            } else {
                assert!(!line.starts_with('#'), "unexpected comment: {line}");
                let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
                };
                assert!(samples.insert(series.to_string(), value).is_none(), "series twice: {series}");
            }
        }
        let scrape = Scrape { text, samples, typed, helped };
        for series in scrape.samples.keys() {
            let family = scrape.family_of(series);
            assert!(scrape.typed.contains_key(&family), "{series}: no TYPE for {family}");
            assert!(scrape.helped.contains(&family), "{series}: no HELP for {family}");
        }
        scrape
    }

    /// The family a series belongs to (a histogram's `_bucket`, `_sum` and `_count` are its own).
    fn family_of(&self, series: &str) -> String {
        let name = series.split('{').next().unwrap_or(series);
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self.typed.get(base).is_some_and(|t| t == "histogram")
            {
                return base.to_string();
            }
        }
        name.to_string()
    }

    fn value(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }

    fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    fn kind(&self, family: &str) -> &str {
        self.typed.get(family).map(String::as_str).unwrap_or("none")
    }
}

/// `GET /metrics` over plain HTTP/1.1; the answer's status must be 200 with the text format.
async fn scrape(address: SocketAddr) -> Scrape {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    Scrape::parse(body.to_string())
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

const SERVICES: [&str; 4] = ["proxy", "image", "runtime", "streaming"];

fn assert_process_metrics(service: &str, scrape: &Scrape) {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    let started = scrape.value("process_start_time_seconds");
    assert!(now - started < 600.0 && started <= now + 1.0, "{service} started at {started}, now {now}");
    assert!(scrape.value("process_resident_memory_bytes") > 1e6, "{service}: RSS");
    assert!(scrape.value("process_open_fds") >= 3.0, "{service}: open fds");
    assert!(scrape.value("process_max_fds") >= scrape.value("process_open_fds"), "{service}: max fds");
    assert_eq!(scrape.kind("process_cpu_seconds_total"), "counter", "{service}");
    assert!(scrape.value("process_cpu_seconds_total") >= 0.0, "{service}: CPU");
}

#[tokio::test]
async fn every_service_serves_metrics_that_move_with_the_calls_made() {
    let addresses: HashMap<&str, SocketAddr> = SERVICES.iter().map(|s| (*s, free_port())).collect();
    let extra_config =
        SERVICES.iter().map(|s| format!("[{s}]\nmetrics_address = \"{}\"\n", addresses[s])).collect::<String>();
    let stack = Stack::start_with(StackOptions { extra_config, ..Default::default() }).await.unwrap();
    let registry = Registry::start().await.unwrap();

    // Before any call: each service answers, with its process metrics.
    for service in SERVICES {
        assert_process_metrics(service, &scrape(addresses[service]).await);
    }

    // A pull (busybox and one more layer) from the registry, through the proxy.
    let image = image_support::busybox(crisp_testkit::images::Format::Oci).unwrap();
    let name = registry.push("metrics/busybox", "v1", &image).await.unwrap();
    let mut images = stack.image_client();
    assert_eq!(image_support::pull(&mut images, &name).await.unwrap(), image.id());
    images.image_fs_info(ImageFsInfoRequest {}).await.unwrap();
    // A pod with a CNI network of its own, Version twice, an unknown method.
    let _network = sandbox_support::write_network(&stack, "metrics", 28, &[]);
    let pod = sandbox_support::run(&stack, sandbox_support::pod_config("scraped", "uid-scraped")).await.unwrap();
    let mut runtime = stack.runtime_client();
    for _ in 0..2 {
        runtime.version(VersionRequest::default()).await.unwrap();
    }
    let mut grpc = tonic::client::Grpc::new(crisp_testkit::cri_channel(stack.proxy_socket()));
    grpc.ready().await.unwrap();
    let unknown = grpc
        .unary::<_, VersionResponse, _>(
            tonic::Request::new(VersionRequest::default()),
            http::uri::PathAndQuery::from_static("/example.Unknown/Method"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unimplemented);

    // The proxy: each call by service, method and code; latency; nothing left in flight.
    let proxy = scrape(addresses["proxy"]).await;
    let calls = |service: &str, method: &str, code: &str| {
        format!(r#"crisp_proxy_calls_total{{grpc_service="{service}",grpc_method="{method}",grpc_code="{code}"}}"#)
    };
    let (image_service, runtime_service) = ("runtime.v1.ImageService", "runtime.v1.RuntimeService");
    assert_eq!(proxy.kind("crisp_proxy_calls_total"), "counter");
    assert_eq!(proxy.value(&calls(image_service, "PullImage", "OK")), 1.0);
    assert_eq!(proxy.value(&calls(image_service, "ImageFsInfo", "OK")), 1.0);
    assert_eq!(proxy.value(&calls(runtime_service, "RunPodSandbox", "OK")), 1.0);
    assert_eq!(proxy.value(&calls(runtime_service, "Version", "OK")), 2.0);
    assert_eq!(proxy.value(&calls("unknown", "unknown", "UNIMPLEMENTED")), 1.0);
    assert_eq!(proxy.kind("crisp_proxy_call_duration_seconds"), "histogram");
    let duration = |part: &str, method: &str, service: &str| {
        format!(r#"crisp_proxy_call_duration_seconds_{part}{{grpc_service="{service}",grpc_method="{method}"}}"#)
    };
    assert_eq!(proxy.value(&duration("count", "Version", runtime_service)), 2.0);
    assert_eq!(proxy.value(&duration("count", "PullImage", image_service)), 1.0);
    let pull_seconds = proxy.value(&duration("sum", "PullImage", image_service));
    assert!(pull_seconds > 0.0 && pull_seconds < 120.0, "{pull_seconds}");
    let bucket = format!(
        r#"crisp_proxy_call_duration_seconds_bucket{{grpc_service="{runtime_service}",grpc_method="Version",le="+Inf"}}"#
    );
    assert_eq!(proxy.value(&bucket), 2.0);
    for service in [image_service, runtime_service] {
        assert_eq!(proxy.value(&format!(r#"crisp_proxy_calls_in_flight{{grpc_service="{service}"}}"#)), 0.0);
    }
    assert_eq!(proxy.value(r#"crisp_proxy_backend_up{backend="image-0"}"#), 1.0);
    assert_eq!(proxy.value(r#"crisp_proxy_backend_up{backend="runtime"}"#), 1.0);
    // Never called, so never dialled: neither up nor down.
    assert_eq!(proxy.get(r#"crisp_proxy_backend_up{backend="streaming"}"#), None);
    assert_eq!(proxy.value(r#"crisp_proxy_image_replica_healthy{replica="0"}"#), 1.0);
    assert_eq!(proxy.value("crisp_proxy_image_retries_total"), 0.0);

    // The image service: one pull, its bytes, its layers, the store's size.
    let images_scrape = scrape(addresses["image"]).await;
    assert_eq!(images_scrape.value(r#"crisp_image_pulls_total{grpc_code="OK"}"#), 1.0);
    assert_eq!(images_scrape.value("crisp_image_pull_duration_seconds_count"), 1.0);
    assert_eq!(images_scrape.value("crisp_image_pulls_in_flight"), 0.0);
    assert_eq!(images_scrape.value("crisp_image_pulls_coalesced_total"), 0.0);
    assert_eq!(images_scrape.value("crisp_image_pull_stalls_total"), 0.0);
    let layer_bytes: usize = image.layers.iter().map(|l| l.data.len()).sum();
    let downloaded = images_scrape.value("crisp_image_pull_bytes_total");
    assert!(downloaded >= layer_bytes as f64, "{downloaded} bytes counted, layers are {layer_bytes}");
    assert_eq!(images_scrape.value("crisp_image_layers_unpacked_total"), image.layers.len() as f64);
    assert_eq!(images_scrape.value("crisp_image_layer_unpack_duration_seconds_count"), image.layers.len() as f64);
    assert!(images_scrape.value(r#"crisp_image_store_bytes{store="content"}"#) >= layer_bytes as f64);
    assert!(images_scrape.value(r#"crisp_image_store_bytes{store="snapshots"}"#) > 0.0);
    // Its containerd calls, timed by API (the pull wrote the image record).
    assert_eq!(images_scrape.kind("crisp_containerd_call_duration_seconds"), "histogram");
    let image_records = containerd_calls(&images_scrape, "containerd.services.images.v1.Images", "");
    assert!(image_records >= 1.0, "{}", images_scrape.text);

    // Labels stay bounded: no image name or pod id anywhere.
    for service in SERVICES {
        let scraped = scrape(addresses[service]).await;
        assert_process_metrics(service, &scraped);
        for secret in [name.as_str(), "metrics/busybox", pod.as_str(), "scraped", "example.Unknown"] {
            assert!(!scraped.text.contains(secret), "{service}'s metrics name {secret}");
        }
    }
    // The process counters move: the proxy's CPU time grows with calls.
    let before = proxy.value("process_cpu_seconds_total");
    for _ in 0..200 {
        runtime.version(VersionRequest::default()).await.unwrap();
    }
    let after = scrape(addresses["proxy"]).await;
    assert!(after.value("process_cpu_seconds_total") >= before);
    assert_eq!(after.value(&calls(runtime_service, "Version", "OK")), 202.0);
    assert!(after.get(&calls(runtime_service, "Version", "UNAVAILABLE")).is_none());

    sandbox_support::stop(&stack, &pod).await.unwrap();
    sandbox_support::remove(&stack, &pod).await.unwrap();
}

#[tokio::test]
async fn an_image_replica_that_dies_shows_in_the_proxys_metrics_and_costs_no_call() {
    let address = free_port();
    // Health checks far apart: the replica leaves the rotation through a call, not a check.
    let extra_config = format!("[proxy]\nmetrics_address = \"{address}\"\nhealth_check_interval = \"1h\"\n");
    let mut stack =
        Stack::start_with(StackOptions { image_replicas: 2, extra_config, ..Default::default() }).await.unwrap();
    let mut images = stack.image_client();
    for _ in 0..4 {
        images.list_images(ListImagesRequest::default()).await.unwrap();
    }
    let before = scrape(address).await;
    for replica in ["0", "1"] {
        assert_eq!(before.value(&format!(r#"crisp_proxy_backend_up{{backend="image-{replica}"}}"#)), 1.0);
        assert_eq!(before.value(&format!(r#"crisp_proxy_image_replica_healthy{{replica="{replica}"}}"#)), 1.0);
    }

    stack.kill_service("image-1").unwrap();
    for _ in 0..4 {
        images.list_images(ListImagesRequest::default()).await.unwrap();
    }
    let after = scrape(address).await;
    assert_eq!(after.value(r#"crisp_proxy_backend_up{backend="image-1"}"#), 0.0);
    assert_eq!(after.value(r#"crisp_proxy_image_replica_healthy{replica="1"}"#), 0.0);
    assert_eq!(after.value(r#"crisp_proxy_image_replica_healthy{replica="0"}"#), 1.0);
    assert!(after.value("crisp_proxy_image_retries_total") >= 1.0, "{}", after.text);
    let ok =
        r#"crisp_proxy_calls_total{grpc_service="runtime.v1.ImageService",grpc_method="ListImages",grpc_code="OK"}"#;
    assert_eq!(after.value(ok), 8.0);
}

/// The calls to containerd's `service` (and `method`, unless empty) the scrape counted.
fn containerd_calls(scrape: &Scrape, service: &str, method: &str) -> f64 {
    let prefix = format!(r#"crisp_containerd_call_duration_seconds_count{{grpc_service="{service}",grpc_method=""#);
    let method = if method.is_empty() { String::new() } else { format!("{method}\"}}") };
    scrape
        .samples
        .iter()
        .filter(|(series, _)| series.strip_prefix(&prefix).is_some_and(|rest| rest.starts_with(&method)))
        .map(|(_, value)| value)
        .sum()
}

/// Scrapes until `ready` holds for the scrape (the gauges read in the background), at most 10 s.
async fn scrape_until(address: SocketAddr, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = scrape(address).await;
        if ready(&scraped) || Instant::now() > deadline {
            return scraped;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_runtime_counts_pods_containers_cni_oom_kills_and_containerd_calls() {
    let address = free_port();
    let extra_config = format!("[runtime]\nmetrics_address = \"{address}\"\n");
    let node = container_support::Node::start_with(StackOptions { extra_config, ..Default::default() }).await.unwrap();
    let _network = sandbox_support::write_network(&node.stack, "rtmetrics", 29, &[]);

    // A pod on the CNI network running a container; a pod on the node's network whose container
    // is killed for memory.
    let mut config = node.pod_config("networked");
    let options = config.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    options.namespace_options.as_mut().unwrap().network = NamespaceMode::Pod as i32;
    let networked = node.pod_with(config).await.unwrap();
    let sleeper = node.run(&networked, node.config("sleeper", &["sleep", "600"])).await.unwrap();
    let hungry = node.pod("hungry").await.unwrap();
    let mut hog = node.config("hog", &["sh", "-c", "a=0123456789abcdef; while true; do a=\"$a$a\"; done"]);
    let limit = 32 * 1024 * 1024;
    hog.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: limit,
            memory_swap_limit_in_bytes: limit,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = node.run(&hungry, hog).await.unwrap();
    assert_eq!(node.wait_exited(&hog).await.unwrap().reason, "OOMKilled");

    let containers = |state: &str| format!(r#"crisp_runtime_containers{{state="{state}"}}"#);
    let pods = |state: &str| format!(r#"crisp_runtime_pods{{state="{state}"}}"#);
    // The status shows the exit as soon as its record is written; the metrics are read apart
    // from it, so they are waited for too.
    let scraped = scrape_until(address, |s| {
        s.get(&containers("running")) == Some(1.0)
            && s.get(&containers("exited")) == Some(1.0)
            && s.get("crisp_runtime_oom_kills_total") == Some(1.0)
    })
    .await;
    assert_eq!(scraped.kind("crisp_runtime_pods"), "gauge");
    assert_eq!(scraped.kind("crisp_runtime_containers"), "gauge");
    assert_eq!(scraped.value(&pods("ready")), 2.0);
    assert_eq!(scraped.value(&pods("notready")), 0.0);
    assert_eq!(scraped.value(&containers("running")), 1.0, "{}", scraped.text);
    assert_eq!(scraped.value(&containers("exited")), 1.0);
    assert_eq!(scraped.value(&containers("created")), 0.0);
    assert_eq!(scraped.value(&containers("unknown")), 0.0);
    // One ADD (the pod on the node's network has none), none failed.
    assert_eq!(scraped.kind("crisp_runtime_cni_duration_seconds"), "histogram");
    assert_eq!(scraped.value(r#"crisp_runtime_cni_duration_seconds_count{operation="add"}"#), 1.0);
    let add_seconds = scraped.value(r#"crisp_runtime_cni_duration_seconds_sum{operation="add"}"#);
    assert!(add_seconds > 0.0 && add_seconds < 60.0, "{add_seconds}");
    assert_eq!(scraped.get(r#"crisp_runtime_cni_failures_total{operation="add"}"#), None);
    assert_eq!(scraped.kind("crisp_runtime_oom_kills_total"), "counter");
    assert_eq!(scraped.value("crisp_runtime_oom_kills_total"), 1.0);
    // containerd's calls by API: two tasks created and started, records written.
    let tasks = "containerd.services.tasks.v1.Tasks";
    assert!(containerd_calls(&scraped, tasks, "Create") >= 2.0, "{}", scraped.text);
    assert!(containerd_calls(&scraped, tasks, "Start") >= 2.0);
    assert!(containerd_calls(&scraped, "containerd.services.containers.v1.Containers", "Create") >= 4.0);
    let create_bucket = format!(
        r#"crisp_containerd_call_duration_seconds_bucket{{grpc_service="{tasks}",grpc_method="Create",le="+Inf"}}"#
    );
    assert_eq!(scraped.value(&create_bucket), containerd_calls(&scraped, tasks, "Create"));

    // Stopping the networked pod: its DEL, the pod not ready, its container exited.
    sandbox_support::stop(&node.stack, &networked.id).await.unwrap();
    let stopped = scrape_until(address, |s| s.get(&containers("exited")) == Some(2.0)).await;
    assert_eq!(stopped.value(r#"crisp_runtime_cni_duration_seconds_count{operation="del"}"#), 1.0);
    assert_eq!(stopped.value(&pods("ready")), 1.0);
    assert_eq!(stopped.value(&pods("notready")), 1.0);
    assert_eq!(stopped.value(&containers("running")), 0.0, "{}", stopped.text);
    // Removed, it is no longer counted at all.
    sandbox_support::remove(&node.stack, &networked.id).await.unwrap();
    let removed = scrape_until(address, |s| s.get(&containers("exited")) == Some(1.0)).await;
    assert_eq!(removed.value(&pods("ready")), 1.0);
    assert_eq!(removed.value(&pods("notready")), 0.0);
    assert_eq!(removed.value(&containers("exited")), 1.0, "{}", removed.text);
    for secret in [networked.id.as_str(), hungry.id.as_str(), sleeper.as_str(), hog.as_str(), "networked"] {
        assert!(!removed.text.contains(secret), "the runtime's metrics name {secret}");
    }
}

/// Runs `binary` with `args` until it exits (at most 30 s); its status and stderr.
fn run_until_exit(binary: &str, args: &[String]) -> (std::process::ExitStatus, String) {
    let path = crisp_testkit::bin_dir().unwrap().join(binary);
    let mut child = Command::new(&path)
        .args(args)
        .env_remove("CRISP_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status, stderr);
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("{binary} {args:?} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_busy_or_bad_metrics_address_stops_the_service_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let config = dir.path().join("none.toml");
    std::fs::write(&config, "").unwrap();
    let common = |service: &str, flag: &str, value: &str| -> Vec<String> {
        vec![
            "--config".into(),
            config.display().to_string(),
            format!("--{service}-socket"),
            dir.path().join(format!("{service}.sock")).display().to_string(),
            "--containerd-address".into(),
            dir.path().join("no-containerd.sock").display().to_string(),
            "--containerd-connect-timeout".into(),
            "20s".into(),
            flag.into(),
            value.into(),
        ]
    };
    // Busy: the service exits at once (before it waits for containerd), naming the address.
    for (binary, service) in [("crisp-proxy", "proxy"), ("crisp-image", "image"), ("crisp-runtime", "runtime")] {
        let flag = format!("--{service}-metrics-address");
        let started = Instant::now();
        let (status, stderr) = run_until_exit(binary, &common(service, &flag, &busy));
        assert!(!status.success(), "{binary} with a busy metrics address exited {status}");
        assert!(stderr.contains(&busy) && stderr.contains("in use"), "{binary}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "{binary} took {:?} to refuse", started.elapsed());
    }
    // Bad: refused with the flag named, exit status 2.
    let (status, stderr) =
        run_until_exit("crisp-streaming", &common("streaming", "--streaming-metrics-address", "localhost:metrics"));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--streaming-metrics-address") && stderr.contains("localhost:metrics"), "{stderr}");
    // In the file: the field and line named.
    std::fs::write(&config, "[proxy]\nmetrics_address = \"nowhere:port\"\n").unwrap();
    let (status, stderr) = run_until_exit("crisp-proxy", &common("proxy", "--log-level", "info"));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("metrics_address") && stderr.contains("nowhere:port"), "{stderr}");
    drop(taken);
}
