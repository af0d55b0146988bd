//! ExecSync through the proxy socket, against a running container in a real containerd with
//! runc: stdout, stderr and the exit code; a timeout that kills the process and says so; output
//! bounded; unknown and stopped containers; nothing left behind.

mod container_support;

use container_support::*;
use crisp_proto::cri::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::Code;

/// A node with a pod running one container (`sleep 1000`). Every task on the node is deleted
/// when this goes away: a shim would outlive the test's containerd.
struct Running {
    node: Node,
    pod: Pod,
    id: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let Ok(tasks) = self.node.stack.ctr(&["task", "list", "--quiet"]) else { return };
        for task in tasks.lines().filter(|t| !t.is_empty()) {
            let _ = self.node.stack.ctr(&["task", "delete", "--force", task]);
        }
    }
}

async fn running(name: &str) -> Running {
    let node = Node::start().await.unwrap();
    let pod = node.pod(name).await.unwrap();
    let id = node.run(&pod, node.config("app", &["sleep", "1000"])).await.unwrap();
    Running { node, pod, id }
}

async fn exec(node: &Node, id: &str, cmd: &[&str], timeout: i64) -> Result<ExecSyncResponse, tonic::Status> {
    let request =
        ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout };
    node.runtime().exec_sync(request).await.map(|r| r.into_inner())
}

fn exec_dirs(node: &Node, id: &str) -> Vec<PathBuf> {
    match std::fs::read_dir(node.stack.dir().join("run/containers").join(id).join("exec")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => vec![],
    }
}

#[tokio::test]
async fn exec_sync_answers_stdout_stderr_and_the_exit_code() {
    let running = running("exec-out").await;
    let (node, id) = (&running.node, running.id.clone());

    let response = exec(node, &id, &["sh", "-c", "echo out; echo err >&2; exit 3"], 0).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&response.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&response.stderr), "err\n");
    assert_eq!(response.exit_code, 3);

    let response = exec(node, &id, &["cat", "/proc/1/cmdline"], 5).await.unwrap();
    assert_eq!(response.stdout, b"sleep\x001000\x00", "the exec runs in the container's PID namespace");

    // As the container's process: its environment and working directory.
    let response = exec(node, &id, &["sh", "-c", "echo $PATH; pwd"], 5).await.unwrap();
    assert!(String::from_utf8_lossy(&response.stdout).starts_with("/"), "{response:?}");
    assert_eq!(response.exit_code, 0);

    // A unique prefix of the id names the container too.
    let response = exec(node, &id[..12], &["true"], 0).await.unwrap();
    assert_eq!(response.exit_code, 0);

    // A timeout too far away to be a deadline is none.
    let response = exec(node, &id, &["true"], i64::MAX).await.unwrap();
    assert_eq!(response.exit_code, 0);

    // Output of a megabyte, whole.
    let response = exec(node, &id, &["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' a"], 0).await.unwrap();
    assert_eq!(response.stdout.len(), 1 << 20);
    assert!(response.stdout.iter().all(|b| *b == b'a'));

    // Execs at once (probes of many containers do that), each with its own output.
    let id_ref = id.as_str();
    let execs = (0..10).map(|i| {
        let script = format!("sleep 0.2; echo exec {i}; exit {i}");
        async move { exec(node, id_ref, &["sh", "-c", &script], 10).await.unwrap() }
    });
    for (i, response) in futures::future::join_all(execs).await.into_iter().enumerate() {
        assert_eq!(String::from_utf8_lossy(&response.stdout), format!("exec {i}\n"));
        assert_eq!(response.exit_code, i as i32);
    }

    assert!(exec_dirs(node, &id).is_empty(), "left behind: {:?}", exec_dirs(node, &id));

    // A command that does not exist: containerd's answer, not a hang.
    let err = exec(node, &id, &["/no/such/binary"], 5).await.unwrap_err();
    assert!(err.message().contains("no/such/binary"), "{err:?}");
}

#[tokio::test]
async fn a_timeout_kills_the_exec_and_answers_deadline_exceeded() {
    let running = running("exec-timeout").await;
    let (node, id) = (&running.node, running.id.clone());

    let started = Instant::now();
    let err = exec(node, &id, &["sleep", "77"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("timeout 1s"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());

    let ps = exec(node, &id, &["sh", "-c", "ps -o args"], 5).await.unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert!(!ps.contains("sleep 77"), "the timed-out process is still there:\n{ps}");
    assert!(ps.contains("sleep 1000"), "{ps}");

    // Cleaned up in the background once killed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exec_dirs(node, &id).is_empty() {
        assert!(Instant::now() < deadline, "left behind: {:?}", exec_dirs(node, &id));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn output_beyond_the_bound_kills_the_exec_and_says_so() {
    let running = running("exec-big").await;
    let (node, id) = (&running.node, running.id.clone());

    let err = exec(node, &id, &["sh", "-c", "while true; do cat /bin/busybox; done"], 60).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("stdout exceeded 16777216 bytes"), "{err:?}");

    let ps = exec(node, &id, &["sh", "-c", "ps -o args"], 5).await.unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert!(!ps.contains("while true"), "the exec is still there:\n{ps}");
}

#[tokio::test]
async fn exec_in_an_unknown_created_or_exited_container_is_refused() {
    let running = running("exec-refused").await;
    let (node, pod) = (&running.node, &running.pod);

    let err = exec(node, "no-such-container", &["true"], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let err = exec(node, &running.id, &[], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let created = node.create(pod, node.config("created", &["sleep", "1000"])).await.unwrap();
    let err = exec(node, &created, &["true"], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not running"), "{err:?}");

    let exited = node.run(pod, node.config("exited", &["true"])).await.unwrap();
    node.wait_exited(&exited).await.unwrap();
    let err = exec(node, &exited, &["true"], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

#[tokio::test]
async fn a_caller_that_goes_away_leaves_no_exec_behind() {
    let running = running("exec-gone").await;
    let (node, id) = (&running.node, running.id.clone());

    let mut request = tonic::Request::new(ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["sleep".into(), "78".into()],
        timeout: 0,
    });
    request.set_timeout(Duration::from_secs(1));
    // The client gives up after a second (tonic says CANCELLED on its side).
    node.runtime().exec_sync(request).await.unwrap_err();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = exec(node, &id, &["sh", "-c", "ps -o args"], 5).await.unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout).to_string();
        if !ps.contains("sleep 78") && exec_dirs(node, &id).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still there:\n{ps}\n{:?}", exec_dirs(node, &id));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_background_child_holding_the_output_does_not_hold_the_answer() {
    let running = running("exec-bg").await;
    let (node, id) = (&running.node, running.id.clone());

    let started = Instant::now();
    let response = exec(node, &id, &["sh", "-c", "echo started; sleep 30 &"], 0).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&response.stdout), "started\n");
    assert_eq!(response.exit_code, 0);
    assert!(started.elapsed() < Duration::from_secs(8), "answered after {:?}", started.elapsed());
}
