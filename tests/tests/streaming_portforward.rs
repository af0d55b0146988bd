//! PortForward through the proxy socket, end to end: the RPC's URL, the HTTP upgrade, SPDY
//! streams to a server inside the pod's network namespace (bridge network and host network),
//! with `crictl port-forward` (client-go, SPDY and WebSocket transports) and with a SPDY client
//! written here; single-use and expiring URLs; errors on the error stream.

mod sandbox_support;
mod streaming_support;

use crisp_proto::cri::*;
use crisp_testkit::{Stack, StackOptions};
use sandbox_support::*;
use std::time::Duration;
use streaming_support::*;
use tonic::Code;

async fn port_forward_url(stack: &Stack, pod: &str) -> Result<String, tonic::Status> {
    let request = PortForwardRequest { pod_sandbox_id: pod.into(), port: vec![8080] };
    Ok(stack.runtime_client().port_forward(request).await?.into_inner().url)
}

const SPDY_UPGRADE: &[(&str, &str)] =
    &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "portforward.k8s.io")];

#[tokio::test]
async fn crictl_port_forward_reaches_a_server_inside_the_pod_over_spdy_and_websocket() {
    if !streaming_support::crictl_installed() {
        return;
    }
    let stack = Stack::start().await.unwrap();
    let _network = write_network(&stack, "pfwd", 41, &[]);
    let id = run(&stack, pod_config("web", "uid-pf-web")).await.unwrap();
    let netns = pod_dir(&stack, &id).join("ns").join("net");
    let _server = echo(listen_in(Some(&netns), 8080));

    for transport in ["spdy", "websocket"] {
        let crictl = Crictl::port_forward(stack.proxy_socket(), &id, 8080, transport).await;
        // Several connections at once through one session.
        let answers = futures::future::join_all((0..4).map(|i| {
            let local = crictl.local.clone();
            async move { round_trip(&local, format!("hello {i} over {transport}\n").as_bytes()).await }
        }))
        .await;
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(String::from_utf8_lossy(answer), format!("hello {i} over {transport}\n"));
        }
        // A large transfer both ways (more than any window).
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        assert!(round_trip(&crictl.local, &big).await == big, "{transport}: 3 MB echoed intact");
    }
}

#[tokio::test]
async fn a_spdy_client_forwards_connections_and_hears_failures_on_the_error_stream() {
    let stack = Stack::start().await.unwrap();
    let _network = write_network(&stack, "pfwd2", 42, &[]);
    let id = run(&stack, pod_config("api", "uid-pf-api")).await.unwrap();
    let netns = pod_dir(&stack, &id).join("ns").join("net");
    let _server = echo(listen_in(Some(&netns), 8080));

    let url = port_forward_url(&stack, &id).await.unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let upgraded = request(&url, "POST", SPDY_UPGRADE).await;
    assert_eq!(upgraded.status, 101);
    assert_eq!(upgraded.header("X-Stream-Protocol-Version"), Some("portforward.k8s.io"));
    assert_eq!(upgraded.header("Upgrade"), Some("SPDY/3.1"));
    let mut client = SpdyClient::new(upgraded.socket);

    // Two connections at once, error stream first as client-go opens them.
    let mut pairs = Vec::new();
    for request_id in ["0", "1"] {
        let headers = |kind| [("streamType", kind), ("port", "8080"), ("requestID", request_id)];
        let error = client.open(&headers("error")).await;
        client.send(error, b"", true).await;
        let data = client.open(&headers("data")).await;
        pairs.push((error, data));
    }
    client.ping(1).await;
    for (i, (_, data)) in pairs.iter().enumerate() {
        client.send(*data, format!("ping {i}").as_bytes(), true).await;
    }
    for (i, (error, data)) in pairs.iter().enumerate() {
        assert_eq!(client.read_to_end(*data).await, format!("ping {i}").as_bytes());
        assert_eq!(client.read_to_end(*error).await, b"", "no error");
        assert!(client.replied[data] && client.replied[error]);
    }

    // Nothing listens on port 9 in the pod: the error stream says so.
    let headers = |kind| [("streamType", kind), ("port", "9"), ("requestID", "2")];
    let error = client.open(&headers("error")).await;
    let data = client.open(&headers("data")).await;
    let message = String::from_utf8(client.read_to_end(error).await).unwrap();
    assert!(message.contains("error forwarding port 9 to pod"), "{message}");
    assert!(message.contains(&id), "{message}");
    let _ = data;

    // A stream without a port header is refused.
    let bad = client.open(&[("streamType", "data"), ("requestID", "3")]).await;
    while !client.resets.contains_key(&bad) {
        assert!(client.pump().await);
    }
}

#[tokio::test]
async fn a_host_network_pod_is_forwarded_to_the_hosts_loopback() {
    if !streaming_support::crictl_installed() {
        return;
    }
    let stack = Stack::start().await.unwrap();
    let _network = write_network(&stack, "pfwd3", 43, &[]);
    let mut config = pod_config("agent", "uid-pf-agent");
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption { network: NamespaceMode::Node as i32, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run(&stack, config).await.unwrap();
    let listener = listen_in(None, 0);
    let port = listener.local_addr().unwrap().port();
    let _server = echo(listener);

    let crictl = Crictl::port_forward(stack.proxy_socket(), &id, port, "spdy").await;
    assert_eq!(round_trip(&crictl.local, b"on the host").await, b"on the host");
}

#[tokio::test]
async fn urls_work_once_and_expire_and_bad_requests_are_refused() {
    let options =
        StackOptions { env: vec![("CRISP_STREAMING_TOKEN_TTL".into(), "2s".into())], ..StackOptions::default() };
    let stack = Stack::start_with(options).await.unwrap();
    let _network = write_network(&stack, "pfwd4", 44, &[]);
    let id = run(&stack, pod_config("once", "uid-pf-once")).await.unwrap();

    // Used once: a second upgrade on the same URL is 404.
    let url = port_forward_url(&stack, &id).await.unwrap();
    assert_eq!(request(&url, "POST", SPDY_UPGRADE).await.status, 101);
    assert_eq!(request(&url, "POST", SPDY_UPGRADE).await.status, 404);
    // Unused past its lifetime: 404.
    let url = port_forward_url(&stack, &id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(request(&url, "POST", SPDY_UPGRADE).await.status, 404);
    // A token for port-forward does not open an exec session.
    let url = port_forward_url(&stack, &id).await.unwrap();
    assert_eq!(request(&url.replace("/portforward/", "/exec/"), "POST", SPDY_UPGRADE).await.status, 404);

    // A protocol the server does not speak: 403 with the ones it does.
    let url = port_forward_url(&stack, &id).await.unwrap();
    let refused = request(
        &url,
        "POST",
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v9.portforward.k8s.io")],
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("X-Accepted-Stream-Protocol-Versions"), Some("portforward.k8s.io"));

    // The RPC checks the pod.
    let unknown = port_forward_url(&stack, "no-such-pod").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let empty = port_forward_url(&stack, "").await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    stop(&stack, &id).await.unwrap();
    let stopped = port_forward_url(&stack, &id).await.unwrap_err();
    assert_eq!(stopped.code(), Code::FailedPrecondition, "{stopped:?}");
}

#[tokio::test]
async fn the_streaming_server_serves_tls_with_a_configured_certificate() {
    if !streaming_support::crictl_installed() {
        return;
    }
    // A self-signed certificate for localhost and 127.0.0.1.
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let options = StackOptions {
        extra_config: format!(
            "[streaming]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let _network = write_network(&stack, "pfwd5", 45, &[]);
    let id = run(&stack, pod_config("tls", "uid-pf-tls")).await.unwrap();
    let netns = pod_dir(&stack, &id).join("ns").join("net");
    let _server = echo(listen_in(Some(&netns), 8080));

    let url = port_forward_url(&stack, &id).await.unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (ca, key) = (cert.display().to_string(), key.display().to_string());
    // crictl wants a client pair too (the server asks for none; the same pair serves).
    let flags = ["--tls-ca", &ca, "--tls-cert", &ca, "--tls-key", &key];
    for transport in ["spdy", "websocket"] {
        let crictl = Crictl::port_forward_with(stack.proxy_socket(), &id, 8080, transport, &flags).await;
        assert_eq!(round_trip(&crictl.local, b"over TLS").await, b"over TLS", "{transport}");
    }
}
