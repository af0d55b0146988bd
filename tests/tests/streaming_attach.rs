//! Attach through the proxy socket, end to end: the streaming server's session on the runtime
//! service's `ContainerIo.Attach`. A container reading lines from its stdin answers them; two
//! attachers both see its output; stdin stays open across attachers unless the container was
//! created with `stdin_once`; `crictl attach`; a stopped container is refused.

mod container_support;
mod streaming_support;

use container_support::{Node, Pod, TaskCleanup};
use crisp_proto::cri::*;
use std::time::Duration;
use streaming_support::*;
use tokio::io::AsyncWriteExt;
use tonic::Code;

const ECHO_LINES: &str = "while read l; do echo got:$l; done; echo stdin-ended";

/// A running container answering each stdin line with `got:<line>`; its task is deleted with
/// the guard.
async fn line_echoer(node: &Node, pod: &Pod, stdin_once: bool) -> (String, TaskCleanup) {
    let mut config = node.config("echoer", &["sh", "-c", ECHO_LINES]);
    config.stdin = true;
    config.stdin_once = stdin_once;
    node.run_guarded(pod, config).await.unwrap()
}

fn attach_request(id: &str, stdin: bool) -> AttachRequest {
    AttachRequest { container_id: id.into(), stdin, tty: false, stdout: true, stderr: true }
}

/// An attach session over SPDY (v4): the client and its error, stdin (if asked) and stdout streams.
struct Attached {
    client: SpdyClient,
    error: u32,
    stdin: Option<u32>,
    stdout: u32,
}

async fn attach(node: &Node, id: &str, stdin: bool) -> Attached {
    let url = node.stack.runtime_client().attach(attach_request(id, stdin)).await.unwrap().into_inner().url;
    let protocol = "v4.channel.k8s.io";
    let upgraded = request(
        &url,
        "POST",
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", protocol)],
    )
    .await;
    assert_eq!(upgraded.status, 101);
    let mut client = SpdyClient::new(upgraded.socket);
    let error = client.open(&[("streamType", "error")]).await;
    let stdin = match stdin {
        true => Some(client.open(&[("streamType", "stdin")]).await),
        false => None,
    };
    let stdout = client.open(&[("streamType", "stdout")]).await;
    client.open(&[("streamType", "stderr")]).await;
    let mut attached = Attached { client, error, stdin, stdout };
    // The session is joined once the server answered every stream.
    while attached.client.replied.len() < 3 + usize::from(stdin.is_some()) {
        assert!(attached.client.pump().await, "the session was set up");
    }
    // The streaming server joins the container's output right after; give it that moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    attached
}

impl Attached {
    async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.expect("attached with stdin");
        self.client.send(stdin, format!("{line}\n").as_bytes(), false).await;
    }

    async fn end_stdin(&mut self) {
        let stdin = self.stdin.expect("attached with stdin");
        self.client.send(stdin, b"", true).await;
    }

    /// Reads until stdout carried `text`; the stdout read so far.
    async fn read_until(&mut self, text: &str) -> String {
        loop {
            let out =
                String::from_utf8_lossy(self.client.received.get(&self.stdout).map_or(&[][..], |v| v)).into_owned();
            if out.contains(text) {
                return out;
            }
            assert!(self.client.pump().await, "the connection ended before {text:?} came: {out:?}");
        }
    }

    /// The session's status once it ended.
    async fn status(&mut self) -> String {
        String::from_utf8(self.client.read_to_end(self.error).await).unwrap()
    }
}

#[tokio::test]
async fn an_attacher_writes_to_the_containers_stdin_and_reads_its_answers() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("attach").await.unwrap();
    let (id, _cleanup) = line_echoer(&node, &pod, false).await;
    let mut first = attach(&node, &id, true).await;
    first.send_line("hello").await;
    first.read_until("got:hello\n").await;
    // Without stdin_once, the end of this attacher's stdin ends its session, not the container's stdin.
    first.end_stdin().await;
    let status = first.status().await;
    assert!(status.contains("Success"), "{status}");
    assert_eq!(node.status(&id).await.unwrap().state(), ContainerState::ContainerRunning);
    // A later attacher still reaches the container's stdin.
    let mut second = attach(&node, &id, true).await;
    second.send_line("again").await;
    let out = second.read_until("got:again\n").await;
    assert!(!out.contains("stdin-ended"), "{out:?}");
}

#[tokio::test]
async fn two_attachers_both_see_the_containers_output() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("attach").await.unwrap();
    let (id, _cleanup) = line_echoer(&node, &pod, false).await;
    let mut writer = attach(&node, &id, true).await;
    let mut watcher = attach(&node, &id, false).await;
    writer.send_line("one").await;
    writer.send_line("two").await;
    assert_eq!(writer.read_until("got:two\n").await, "got:one\ngot:two\n");
    assert_eq!(watcher.read_until("got:two\n").await, "got:one\ngot:two\n");
    // The container's exit ends every session, with success.
    node.stop(&id, 0).await.unwrap();
    let all = watcher.client.read_to_end(watcher.stdout).await;
    assert_eq!(String::from_utf8_lossy(&all), "got:one\ngot:two\n");
    let status = watcher.status().await;
    assert!(status.contains("Success"), "{status}");
}

#[tokio::test]
async fn with_stdin_once_the_end_of_the_attachers_stdin_closes_the_containers() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("attach").await.unwrap();
    let (id, _cleanup) = line_echoer(&node, &pod, true).await;
    let mut attached = attach(&node, &id, true).await;
    attached.send_line("last").await;
    attached.end_stdin().await;
    // The shell sees the end of its stdin, says so and exits; the session sees all of it.
    let out = String::from_utf8(attached.client.read_to_end(attached.stdout).await).unwrap();
    assert_eq!(out, "got:last\nstdin-ended\n");
    let status = attached.status().await;
    assert!(status.contains("Success"), "{status}");
    let exited = node.wait_exited(&id).await.unwrap();
    assert_eq!(exited.exit_code, 0);
}

#[tokio::test]
async fn crictl_attach_sends_stdin_and_prints_the_answer() {
    if !streaming_support::crictl_installed() {
        return;
    }
    let node = Node::start().await.unwrap();
    let pod = node.pod("attach").await.unwrap();
    let (id, _cleanup) = line_echoer(&node, &pod, true).await;
    let mut child = crictl(node.stack.proxy_socket(), &["attach", "-i", &id]);
    let mut stdin = child.stdin.take().unwrap();
    // crictl attaches before it reads its stdin; a moment lets the session join the output first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stdin.write_all(b"from crictl\n").await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{out} / {err}");
    assert_eq!(out, "got:from crictl\nstdin-ended\n", "{err}");
}

#[tokio::test]
async fn attach_to_a_stopped_container_is_refused() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("attach").await.unwrap();
    let (id, _cleanup) = line_echoer(&node, &pod, false).await;
    node.stop(&id, 0).await.unwrap();
    let refused = node.stack.runtime_client().attach(attach_request(&id, true)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let missing = node.stack.runtime_client().attach(attach_request("nothing", true)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
}

#[tokio::test]
async fn an_attacher_that_stops_reading_holds_up_neither_the_container_nor_other_attachers() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("attach").await.unwrap();
    // On a line from stdin: 40 MB of output (more than every buffer on the way holds) in one go, then a marker.
    let script = "read go; head -c 40000000 /dev/zero | tr '\\0' x; echo; echo flood-done; sleep 3600";
    let mut config = node.config("flood", &["sh", "-c", script]);
    config.stdin = true;
    let (id, _cleanup) = node.run_guarded(&pod, config.clone()).await.unwrap();
    // This one never reads (its SPDY window and socket fill up).
    let _stalled = attach(&node, &id, false).await;
    let mut reader = attach(&node, &id, true).await;
    reader.send_line("go").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = reader.client.received.get(&reader.stdout).map_or(&[][..], |v| v);
        if out.ends_with(b"flood-done\n") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reading attacher got the whole flood");
        assert!(reader.client.pump().await, "the reading attacher's session went on");
    }
    // The container wrote all of it: its log has the marker.
    while !node.log(&pod, &config).contains("flood-done") {
        assert!(tokio::time::Instant::now() < deadline, "the container's output reached its log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `ContainerIo.Attach` on the runtime service's own socket, as the streaming server calls it:
/// the request sender (kept open) and the output.
async fn internal_attach(
    node: &Node,
    start: crisp_proto::internal::AttachStart,
) -> (
    tokio::sync::mpsc::Sender<crisp_proto::internal::AttachInput>,
    Result<tonic::Streaming<crisp_proto::internal::AttachOutput>, tonic::Status>,
) {
    use crisp_proto::internal::container_io_client::ContainerIoClient;
    use crisp_proto::internal::{AttachInput, attach_input::Input};
    let channel = crisp_testkit::cri_channel(&node.stack.dir().join("runtime.sock"));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AttachInput { input: Some(Input::Start(start)) }).await.unwrap();
    let answer = ContainerIoClient::new(channel).attach(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    (tx, answer.map(|a| a.into_inner()))
}

#[tokio::test]
async fn a_stalled_attacher_misses_output_and_is_told_how_many_bytes() {
    use crisp_proto::internal::AttachStart;
    let node = Node::start().await.unwrap();
    let pod = node.pod("attach").await.unwrap();
    let script = "while read l; do [ \"$l\" = flood ] && head -c 40000000 /dev/zero | tr '\\0' x; echo got:$l; done";
    let mut config = node.config("flood", &["sh", "-c", script]);
    config.stdin = true;
    let (id, _cleanup) = node.run_guarded(&pod, config.clone()).await.unwrap();
    let watch = AttachStart { container_id: id.clone(), stdin: false, stdout: true, stderr: true };
    let (_keep, stalled) = internal_attach(&node, watch).await;
    let mut stalled = stalled.unwrap();
    let mut writer = attach(&node, &id, true).await;
    writer.send_line("flood").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !node.log(&pod, &config).contains("got:flood") {
        assert!(tokio::time::Instant::now() < deadline, "the container's output reached its log");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Now it reads (what was queued for it, then what comes); the line after the flood may
    // still meet a full queue, so it is sent until one arrives.
    let reading = tokio::spawn(async move {
        let (mut received, mut lagged) = (0u64, 0u64);
        loop {
            let piece = stalled.message().await.unwrap().unwrap();
            lagged += piece.lagged_bytes;
            if piece.data.ends_with(b"got:after\n") {
                return (received, lagged);
            }
            received += piece.data.len() as u64;
        }
    });
    let mut sent = 0u64;
    while !reading.is_finished() {
        assert!(tokio::time::Instant::now() < deadline, "the attacher got output again once it read");
        writer.send_line("after").await;
        sent += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (received, lagged) = reading.await.unwrap();
    let flood = 40_000_000 + "got:flood\n".len() as u64 + sent * "got:after\n".len() as u64;
    assert!(lagged > 0, "it fell behind");
    assert!(received + lagged <= flood, "{received} + {lagged} of {flood}");
    assert!(received > 0, "it got what was queued for it");
}

#[tokio::test]
async fn the_internal_attach_checks_its_start() {
    use crisp_proto::internal::AttachStart;
    let node = Node::start().await.unwrap();
    let pod = node.pod("attach").await.unwrap();
    let (id, _cleanup) = node.run_guarded(&pod, node.config("quiet", &["sleep", "3600"])).await.unwrap();
    let with_stdin = AttachStart { container_id: id.clone(), stdin: true, stdout: true, stderr: false };
    let (_tx, answer) = internal_attach(&node, with_stdin).await;
    assert_eq!(answer.unwrap_err().code(), Code::FailedPrecondition, "stdin of a container without stdin");
    let missing = AttachStart { container_id: "nothing".into(), stdin: false, stdout: true, stderr: false };
    let (_tx, answer) = internal_attach(&node, missing).await;
    assert_eq!(answer.unwrap_err().code(), Code::NotFound);
    // A first message other than `start`.
    use crisp_proto::internal::{AttachInput, attach_input::Input, container_io_client::ContainerIoClient};
    let channel = crisp_testkit::cri_channel(&node.stack.dir().join("runtime.sock"));
    let first = AttachInput { input: Some(Input::Stdin(b"hi".to_vec())) };
    let answer = ContainerIoClient::new(channel).attach(futures::stream::iter([first])).await;
    assert_eq!(answer.unwrap_err().code(), Code::InvalidArgument);
}
