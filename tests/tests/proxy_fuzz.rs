//! A bounded, seeded fuzz of the node stack through the proxy: random bytes, truncated and
//! mis-typed protobuf fields, non-UTF-8 strings, huge strings and repeated fields, broken gRPC
//! framing, 1 ms deadlines and cancelled calls, sent to every RPC of both CRI services (those
//! that change state only with ids that cannot exist). It passes when no service panics or
//! exits, no call outlives its deadline, nothing is created in containerd, and Version and
//! ListImages still answer at the end.
//!
//! `CRISP_FUZZ_CALLS` (default 20 000) and `CRISP_FUZZ_SEED` change the run; a failure prints
//! the seed and the call that broke.

mod proxy_support;

use crisp_testkit::Stack;
use proxy_support::{RawClient, alive, frame};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Reads only: any bytes at all.
    Read,
    /// A server stream: always sent with a short deadline, so that it ends.
    Stream,
    /// Changes state: the message starts with ids or names that cannot exist; what is fuzzed
    /// is appended (a later field 1 merges into, or overrides, the first with more nonsense).
    Changes,
    /// Changes node-wide settings: the message starts with a field of the wrong wire type, so
    /// it never decodes, whatever follows.
    Undecodable,
}

const NO_ID: &[u8] = b"crisp-fuzz-does-not-exist-0123456789abcdef";
/// An image that cannot be pulled: a registry on a loopback port nothing listens on.
const NO_IMAGE: &[u8] = b"127.0.0.1:1/crisp-fuzz/none:0";

/// Every RPC of runtime.v1 (cri-api v0.36.3), with its kind. New RPCs go here; the newest
/// answer UNIMPLEMENTED until a service builds them.
const RPCS: &[(&str, Kind)] = &[
    ("/runtime.v1.RuntimeService/Version", Kind::Read),
    ("/runtime.v1.RuntimeService/RunPodSandbox", Kind::Changes),
    ("/runtime.v1.RuntimeService/StopPodSandbox", Kind::Changes),
    ("/runtime.v1.RuntimeService/RemovePodSandbox", Kind::Changes),
    ("/runtime.v1.RuntimeService/PodSandboxStatus", Kind::Read),
    ("/runtime.v1.RuntimeService/ListPodSandbox", Kind::Read),
    ("/runtime.v1.RuntimeService/CreateContainer", Kind::Changes),
    ("/runtime.v1.RuntimeService/StartContainer", Kind::Changes),
    ("/runtime.v1.RuntimeService/StopContainer", Kind::Changes),
    ("/runtime.v1.RuntimeService/RemoveContainer", Kind::Changes),
    ("/runtime.v1.RuntimeService/ListContainers", Kind::Read),
    ("/runtime.v1.RuntimeService/ContainerStatus", Kind::Read),
    ("/runtime.v1.RuntimeService/UpdateContainerResources", Kind::Changes),
    ("/runtime.v1.RuntimeService/ReopenContainerLog", Kind::Changes),
    ("/runtime.v1.RuntimeService/ExecSync", Kind::Changes),
    ("/runtime.v1.RuntimeService/Exec", Kind::Changes),
    ("/runtime.v1.RuntimeService/Attach", Kind::Changes),
    ("/runtime.v1.RuntimeService/PortForward", Kind::Changes),
    ("/runtime.v1.RuntimeService/ContainerStats", Kind::Read),
    ("/runtime.v1.RuntimeService/ListContainerStats", Kind::Read),
    ("/runtime.v1.RuntimeService/PodSandboxStats", Kind::Read),
    ("/runtime.v1.RuntimeService/ListPodSandboxStats", Kind::Read),
    ("/runtime.v1.RuntimeService/UpdateRuntimeConfig", Kind::Undecodable),
    ("/runtime.v1.RuntimeService/Status", Kind::Read),
    ("/runtime.v1.RuntimeService/CheckpointContainer", Kind::Changes),
    ("/runtime.v1.RuntimeService/GetContainerEvents", Kind::Stream),
    ("/runtime.v1.RuntimeService/ListMetricDescriptors", Kind::Read),
    ("/runtime.v1.RuntimeService/ListPodSandboxMetrics", Kind::Read),
    ("/runtime.v1.RuntimeService/RuntimeConfig", Kind::Read),
    ("/runtime.v1.RuntimeService/UpdatePodSandboxResources", Kind::Undecodable),
    ("/runtime.v1.RuntimeService/StreamPodSandboxes", Kind::Stream),
    ("/runtime.v1.RuntimeService/StreamContainers", Kind::Stream),
    ("/runtime.v1.RuntimeService/StreamContainerStats", Kind::Stream),
    ("/runtime.v1.RuntimeService/StreamPodSandboxStats", Kind::Stream),
    ("/runtime.v1.RuntimeService/StreamPodSandboxMetrics", Kind::Stream),
    ("/runtime.v1.ImageService/ListImages", Kind::Read),
    ("/runtime.v1.ImageService/ImageStatus", Kind::Read),
    ("/runtime.v1.ImageService/PullImage", Kind::Changes),
    ("/runtime.v1.ImageService/RemoveImage", Kind::Changes),
    ("/runtime.v1.ImageService/ImageFsInfo", Kind::Read),
    ("/runtime.v1.ImageService/StreamImages", Kind::Stream),
];

// Protobuf encoding, by hand: any field number, any wire type, any bytes.
fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn tag(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint((u64::from(field) << 3) | u64::from(wire & 7), out);
}

fn len_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    tag(field, 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// The start of a state-changing RPC's message: ids and names that cannot exist.
fn base(path: &str, kind: Kind) -> Vec<u8> {
    let mut out = Vec::new();
    match kind {
        Kind::Read | Kind::Stream => {}
        Kind::Undecodable => {
            // Field 1 is a message in both; as fixed64 it cannot decode.
            tag(1, 1, &mut out);
            out.extend_from_slice(&[0xff; 8]);
        }
        Kind::Changes => {
            let method = path.rsplit('/').next().unwrap_or_default();
            match method {
                "RunPodSandbox" => {
                    let mut metadata = Vec::new();
                    len_field(1, NO_ID, &mut metadata);
                    len_field(2, NO_ID, &mut metadata);
                    len_field(3, NO_ID, &mut metadata);
                    let mut config = Vec::new();
                    len_field(1, &metadata, &mut config);
                    len_field(1, &config, &mut out);
                    // runtime_handler: none such.
                    len_field(2, NO_ID, &mut out);
                }
                "PullImage" | "RemoveImage" => {
                    let mut spec = Vec::new();
                    len_field(1, if method == "PullImage" { NO_IMAGE } else { NO_ID }, &mut spec);
                    len_field(1, &spec, &mut out);
                }
                // Every other one names its container or pod sandbox in field 1.
                _ => len_field(1, NO_ID, &mut out),
            }
        }
    }
    out
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random()).collect()
}

/// Some nonsense in protobuf form (or not).
fn nonsense(rng: &mut StdRng) -> (Vec<u8>, &'static str) {
    let mut out = Vec::new();
    let field = rng.random_range(1..=20);
    let what = match rng.random_range(0..100) {
        0..25 => {
            out = random_bytes(rng, 64);
            "random bytes"
        }
        25..40 => {
            // A valid-looking message, cut short.
            for _ in 0..rng.random_range(1..5) {
                len_field(rng.random_range(1..=10), &random_bytes(rng, 24), &mut out);
            }
            let cut = rng.random_range(0..out.len().max(1));
            out.truncate(cut);
            "truncated fields"
        }
        40..60 => {
            // A field of a wire type its schema does not have.
            let wire = [0u8, 1, 5, 2, 3, 4, 6, 7][rng.random_range(0..8)];
            tag(field, wire, &mut out);
            match wire {
                0 => varint(rng.random(), &mut out),
                1 => out.extend_from_slice(&rng.random::<u64>().to_le_bytes()),
                5 => out.extend_from_slice(&rng.random::<u32>().to_le_bytes()),
                2 => {
                    let bytes = random_bytes(rng, 16);
                    varint(bytes.len() as u64, &mut out);
                    out.extend_from_slice(&bytes);
                }
                _ => {}
            }
            "mis-typed field"
        }
        60..80 => {
            // Not UTF-8, as a string and as a nested message's string.
            let bad = [0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1];
            len_field(field, &bad, &mut out);
            let mut inner = Vec::new();
            len_field(1, &bad, &mut inner);
            len_field(1, &inner, &mut out);
            "non-UTF-8 strings"
        }
        80..86 => {
            let mut inner = Vec::new();
            len_field(1, &random_bytes(rng, 8), &mut inner);
            let mut deeper = Vec::new();
            len_field(1, &inner, &mut deeper);
            len_field(field, &deeper, &mut out);
            "nested messages"
        }
        86..90 => {
            for _ in 0..rng.random_range(1000..20_000) {
                len_field(field, b"a", &mut out);
            }
            "huge repeated field"
        }
        90..92 => {
            len_field(field, &vec![b'x'; rng.random_range(1 << 20..4 << 20)], &mut out);
            "huge string"
        }
        _ => "empty message",
    };
    (out, what)
}

/// The request body: the message in a gRPC frame, or framing that is itself wrong.
fn body(rng: &mut StdRng, message: &[u8]) -> (bytes::Bytes, &'static str) {
    match rng.random_range(0..100) {
        0..3 => (bytes::Bytes::new(), "no body"),
        3..6 => {
            let mut framed = frame(message).to_vec();
            framed[0] = 1; // compressed, with no grpc-encoding
            (framed.into(), "compressed flag")
        }
        6..9 => {
            let mut framed = frame(message).to_vec();
            framed[1..5].copy_from_slice(&(message.len() as u32 + 100).to_be_bytes());
            (framed.into(), "frame longer than the body")
        }
        9..11 => (bytes::Bytes::from(random_bytes(rng, 4)), "partial frame header"),
        11..13 => {
            let mut framed = frame(message).to_vec();
            framed.extend_from_slice(&frame(message));
            (framed.into(), "two messages")
        }
        _ => (frame(message), "framed"),
    }
}

#[derive(Debug)]
struct Call {
    path: &'static str,
    message: &'static str,
    framing: &'static str,
    timeout: Option<Duration>,
    cancel_after: Option<Duration>,
    body: bytes::Bytes,
}

fn plan(rng: &mut StdRng) -> Call {
    let (path, kind) = RPCS[rng.random_range(0..RPCS.len())];
    let (extra, message) = nonsense(rng);
    let mut whole = base(path, kind);
    whole.extend_from_slice(&extra);
    let (body, framing) = body(rng, &whole);
    let roll = rng.random_range(0..100);
    let timeout = match (kind, roll) {
        (_, 0..25) => Some(Duration::from_millis(1)),
        (Kind::Stream, _) => Some(Duration::from_millis(rng.random_range(2..100))),
        (Kind::Changes, _) if path.ends_with("PullImage") => Some(Duration::from_millis(500)),
        (_, 25..35) => None,
        _ => Some(Duration::from_secs(5)),
    };
    let cancel_after = (rng.random_range(0..10) == 0).then(|| Duration::from_micros(rng.random_range(0..3000)));
    Call { path, message, framing, timeout, cancel_after, body }
}

fn grpc_timeout(d: Duration) -> String {
    format!("{}m", d.as_millis())
}

/// How long past its deadline a call may take to end: the proxy answers at the deadline, and
/// this machine is busy with other builds.
const SLACK: Duration = Duration::from_secs(5);
/// A call without a deadline must end by then all the same.
const NO_DEADLINE_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_calls_to_every_rpc_break_nothing() {
    let calls: usize = std::env::var("CRISP_FUZZ_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let seed: u64 = std::env::var("CRISP_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20_261_129);
    let mut stack = Stack::start().await.unwrap();
    let socket = stack.proxy_socket().to_path_buf();
    let names = ["proxy", "runtime", "streaming", "image-0"];
    let pids: Vec<u32> = names.iter().map(|n| stack.service_pid(n).unwrap()).collect();

    const WORKERS: usize = 16;
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let socket = socket.clone();
        let share = calls / WORKERS + usize::from(worker < calls % WORKERS);
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(worker as u64));
            let mut client = RawClient::connect(&socket).await.unwrap();
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for n in 0..share {
                let call = plan(&mut rng);
                let limit = call.timeout.map(|t| t + SLACK).unwrap_or(NO_DEADLINE_LIMIT);
                let timeout = call.timeout.map(grpc_timeout);
                let begun = Instant::now();
                let future = client.call(call.path, call.body.clone(), timeout.as_deref());
                let outcome = match call.cancel_after {
                    Some(after) => tokio::time::timeout(after, future).await.ok(),
                    None => match tokio::time::timeout(limit, future).await {
                        Ok(outcome) => Some(outcome),
                        Err(_) => panic!(
                            "seed {seed} worker {worker} call {n}: no answer after {limit:?} to {:?} {} ({}, {})",
                            call.timeout, call.path, call.message, call.framing
                        ),
                    },
                };
                let took = begun.elapsed();
                assert!(
                    took <= limit + Duration::from_secs(1),
                    "seed {seed} worker {worker} call {n}: {} took {took:?} (deadline {:?})",
                    call.path,
                    call.timeout
                );
                let key = match outcome {
                    None => "cancelled".to_string(),
                    Some(Ok(ended)) if ended.code == tonic::Code::Unavailable as i32 => {
                        let message: String = ended.message.chars().take(50).collect();
                        format!("Unavailable: {message}")
                    }
                    Some(Ok(ended)) => format!("{:?}", tonic::Code::from(ended.code)),
                    Some(Err(err)) => {
                        // The connection may have been closed under a call with broken framing;
                        // anything else is a failure of the proxy.
                        let text = err.to_string();
                        client = RawClient::connect(&socket).await.unwrap_or_else(|e| {
                            panic!("seed {seed}: the proxy no longer accepts connections ({e}) after {text}")
                        });
                        format!("transport error: {text}")
                    }
                };
                *counts.entry(key).or_default() += 1;
            }
            counts
        }));
    }
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for worker in workers {
        for (key, n) in worker.await.unwrap() {
            *counts.entry(key).or_default() += n;
        }
    }
    eprintln!("{calls} calls (seed {seed}) in {:?}: {counts:?}", started.elapsed());
    let transport_errors: usize = counts.iter().filter(|(k, _)| k.starts_with("transport")).map(|(_, n)| n).sum();
    assert_eq!(transport_errors, 0, "calls that got no gRPC status: {counts:?}");

    // Every service is still the process it was, and none panicked.
    for (name, pid) in names.iter().zip(&pids) {
        assert!(alive(*pid), "{name} exited:\n{}", stack.service_log(name).unwrap_or_default());
        assert_eq!(stack.service_pid(name).unwrap(), *pid, "{name} was restarted");
        let log = stack.service_log(name).unwrap();
        assert!(!log.contains("panicked"), "{name} panicked:\n{log}");
    }
    // No backend was ever unreachable (it would have been taken out of the rotation).
    let log = stack.service_log("proxy").unwrap();
    assert!(!log.contains("taken out of rotation"), "an image replica left the rotation:\n{log}");
    assert!(!log.contains("backend unavailable"), "a backend became unreachable:\n{log}");
    // Nothing was created.
    for what in ["images", "containers", "tasks", "leases"] {
        let listed = stack.ctr(&[what, "ls", "-q"]).unwrap();
        assert!(listed.trim().is_empty(), "the fuzz created {what}: {listed}");
    }
    // The stack still answers.
    let client = RawClient::connect(&socket).await.unwrap();
    for path in ["/runtime.v1.RuntimeService/Version", "/runtime.v1.ImageService/ListImages"] {
        let ended = client.call(path, frame(&[]), Some("5S")).await.unwrap();
        assert_eq!(ended.code, 0, "{path}: {}", ended.message);
    }
}
