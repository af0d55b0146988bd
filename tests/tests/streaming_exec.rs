//! Exec through the proxy socket, end to end: `crictl exec` (client-go, SPDY and WebSocket),
//! and a SPDY client written here for each protocol version: output and exit codes, stdin and
//! its end, a TTY with a resize, a client that goes away; the RPC's checks.

mod container_support;
mod streaming_support;

use container_support::{Node, TaskCleanup};
use crisp_proto::cri::*;
use crisp_testkit::Stack;
use std::time::Duration;
use streaming_support::*;
use tokio::io::AsyncWriteExt;
use tonic::Code;

/// A node with a running busybox container (`sleep`) made through the CRI, and its id; the
/// container's task is deleted with the guard.
async fn node_with_container() -> (Node, String, TaskCleanup) {
    let node = Node::start().await.unwrap();
    let pod = node.pod("shell").await.unwrap();
    let mut config = node.config("box", &["sleep", "3600"]);
    config.envs = vec![KeyValue { key: "GREETING".into(), value: b"from the container".to_vec() }];
    let (id, cleanup) = node.run_guarded(&pod, config).await.unwrap();
    (node, id, cleanup)
}

async fn exec_url(stack: &Stack, request: ExecRequest) -> Result<String, tonic::Status> {
    Ok(stack.runtime_client().exec(request).await?.into_inner().url)
}

fn exec_request(id: &str, cmd: &[&str], stdin: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

/// `crictl exec` with `args`, `input` on its stdin: (exit code, stdout, stderr).
async fn crictl_exec(stack: &Stack, args: &[&str], input: &[u8]) -> (i32, String, String) {
    let args: Vec<&str> = ["exec"].into_iter().chain(args.iter().copied()).collect();
    let mut child = crictl(stack.proxy_socket(), &args);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn crictl_exec_runs_commands_with_output_exit_codes_and_stdin_over_both_transports() {
    if !streaming_support::crictl_installed() {
        return;
    }
    let (node, id, _cleanup) = node_with_container().await;
    let stack = &node.stack;
    for transport in ["spdy", "websocket"] {
        let (code, out, err) =
            crictl_exec(stack, &["--transport", transport, &id, "sh", "-c", "echo out; echo err >&2; exit 3"], b"")
                .await;
        // crictl exits 1 on any failure; the code it read from the status is in its message.
        assert_eq!(code, 1, "{transport}: {out} / {err}");
        assert!(err.contains("command terminated with exit code 3"), "{transport}: {err}");
        assert_eq!(out, "out\n", "{transport}");
        assert!(err.lines().any(|l| l == "err"), "{transport}: {err}");

        let (code, out, _) =
            crictl_exec(stack, &["--transport", transport, &id, "sh", "-c", "echo $GREETING"], b"").await;
        assert_eq!((code, out.as_str()), (0, "from the container\n"), "{transport}");

        let (code, out, err) =
            crictl_exec(stack, &["--transport", transport, "-i", &id, "busybox", "wc", "-c"], &[b'x'; 100_000]).await;
        assert_eq!((code, out.trim()), (0, "100000"), "{transport}: stdin to its end: {err}");
    }
}

async fn spdy_session(url: &str, protocol: &str) -> SpdyClient {
    let upgraded = request(
        url,
        "POST",
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", protocol)],
    )
    .await;
    assert_eq!(upgraded.status, 101);
    assert_eq!(upgraded.header("X-Stream-Protocol-Version"), Some(protocol));
    SpdyClient::new(upgraded.socket)
}

#[tokio::test]
async fn each_spdy_protocol_version_reports_the_exit_as_it_defines() {
    let (node, id, _cleanup) = node_with_container().await;
    let stack = &node.stack;
    for protocol in
        ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]
    {
        for (script, code) in [("echo hi; exit 0", 0), ("echo hi; exit 7", 7)] {
            let url = exec_url(stack, exec_request(&id, &["sh", "-c", script], false, false)).await.unwrap();
            let mut client = spdy_session(&url, protocol).await;
            let error = client.open(&[("streamType", "error")]).await;
            let stdout = client.open(&[("streamType", "stdout")]).await;
            let stderr = client.open(&[("streamType", "stderr")]).await;
            assert_eq!(client.read_to_end(stdout).await, b"hi\n", "{protocol}");
            assert_eq!(client.read_to_end(stderr).await, b"", "{protocol}");
            let status = String::from_utf8(client.read_to_end(error).await).unwrap();
            let json = protocol.starts_with("v4") || protocol.starts_with("v5");
            match (json, code) {
                (true, 0) => assert_eq!(status, r#"{"metadata":{},"status":"Success"}"#, "{protocol}"),
                (true, _) => {
                    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
                    assert_eq!(status["status"], "Failure", "{protocol}");
                    assert_eq!(status["reason"], "NonZeroExitCode", "{protocol}");
                    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
                    assert_eq!(status["details"]["causes"][0]["message"], "7");
                }
                (false, 0) => assert_eq!(status, "", "{protocol}"),
                (false, _) => assert!(status.contains("non-zero exit code"), "{protocol}: {status}"),
            }
        }
    }
}

#[tokio::test]
async fn a_tty_exec_gets_its_resize_and_its_stdin() {
    let (node, id, _cleanup) = node_with_container().await;
    let stack = &node.stack;
    let script = "read line; stty size; echo got $line";
    let url = exec_url(stack, exec_request(&id, &["sh", "-c", script], true, true)).await.unwrap();
    let mut client = spdy_session(&url, "v4.channel.k8s.io").await;
    let error = client.open(&[("streamType", "error")]).await;
    let stdin = client.open(&[("streamType", "stdin")]).await;
    let stdout = client.open(&[("streamType", "stdout")]).await;
    let resize = client.open(&[("streamType", "resize")]).await;
    client.send(resize, br#"{"Width":123,"Height":45}"#, false).await;
    // Give the resize a moment to land before the shell reads its size.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.send(stdin, b"hello\r", false).await;
    let out = String::from_utf8(client.read_to_end(stdout).await).unwrap();
    assert!(out.contains("45 123"), "{out:?}");
    assert!(out.contains("got hello"), "{out:?}");
    let status = String::from_utf8(client.read_to_end(error).await).unwrap();
    assert!(status.contains("Success"), "{status}");
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_no_exec_process_behind() {
    let (node, id, _cleanup) = node_with_container().await;
    let stack = &node.stack;
    let script = "sleep 1000";
    let url = exec_url(stack, exec_request(&id, &["sh", "-c", script], false, false)).await.unwrap();
    let mut client = spdy_session(&url, "v4.channel.k8s.io").await;
    client.open(&[("streamType", "error")]).await;
    client.open(&[("streamType", "stdout")]).await;
    client.open(&[("streamType", "stderr")]).await;
    let processes = || stack.ctr(&["task", "ps", &id]).unwrap().lines().count() - 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while processes() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the exec process started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    while processes() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the exec process was killed when its client went away: {}",
            stack.ctr(&["task", "ps", &id]).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn exec_requests_are_checked() {
    let (node, id, _cleanup) = node_with_container().await;
    let stack = &node.stack;
    let mut bad = exec_request(&id, &["true"], false, true);
    bad.stderr = true;
    assert_eq!(exec_url(stack, bad).await.unwrap_err().code(), Code::InvalidArgument, "tty with stderr");
    let mut none = exec_request(&id, &["true"], false, false);
    (none.stdout, none.stderr) = (false, false);
    assert_eq!(exec_url(stack, none).await.unwrap_err().code(), Code::InvalidArgument, "no stream");
    assert_eq!(exec_url(stack, exec_request(&id, &[], false, false)).await.unwrap_err().code(), Code::InvalidArgument);
    let missing = exec_url(stack, exec_request("nothing", &["true"], false, false)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    node.stop(&id, 0).await.unwrap();
    let stopped = exec_url(stack, exec_request(&id, &["true"], false, false)).await.unwrap_err();
    assert_eq!(stopped.code(), Code::FailedPrecondition, "{stopped:?}");
}

#[tokio::test]
async fn crictl_exec_it_in_a_terminal_gets_a_tty_of_the_terminals_size() {
    if !streaming_support::crictl_installed() {
        return;
    }
    let (node, id, _cleanup) = node_with_container().await;
    let endpoint = format!("unix://{}", node.stack.proxy_socket().display());
    for transport in ["spdy", "websocket"] {
        // `script` gives crictl a terminal; crictl sends its size, the command sees it.
        let inner = format!(
            "stty cols 77 rows 22; crictl --runtime-endpoint {endpoint} exec -it --transport {transport} {id} sh -c 'tty; stty size'"
        );
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new("script").args(["-qec", &inner, "/dev/null"]).output(),
        )
        .await
        .unwrap()
        .unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{transport}: {out} {}", String::from_utf8_lossy(&output.stderr));
        assert!(out.contains("/dev/pts/"), "{transport}: a terminal: {out}");
        assert!(out.contains("22 77"), "{transport}: the terminal's size: {out}");
    }
}
