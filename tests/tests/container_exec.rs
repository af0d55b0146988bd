//! ExecSync through the proxy socket, against a running container in a real containerd with
//! runc: stdout, stderr and the exit code; a timeout that kills the process and says so; output
//! bounded; unknown and stopped containers; nothing left behind.

use crisp_proto::cri::*;
use crisp_testkit::Stack;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

/// A busybox root file system: the static busybox and a link per applet.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/usr/bin/busybox", bin.join("busybox")).unwrap();
    let list = std::process::Command::new("/usr/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    rootfs
}

/// A container of crisp's (labelled as CreateContainer labels one) in the stack's containerd,
/// its task deleted when this goes away (the shim would outlive the test's containerd).
struct Container {
    id: String,
    address: PathBuf,
}

impl Drop for Container {
    fn drop(&mut self) {
        let address = self.address.to_str().unwrap();
        let _ = std::process::Command::new("ctr")
            .args(["--address", address, "--namespace", "crisp", "task", "delete", "--force", &self.id])
            .output();
    }
}

/// A unique id for this test process (others may run containers of the same name at once).
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// A running container (`sleep 1000`) of crisp's.
fn running_container(stack: &Stack, name: &str) -> Container {
    let id = unique(name);
    let rootfs = busybox_rootfs(&stack.dir().join(&id));
    let rootfs = rootfs.to_str().unwrap();
    stack
        .ctr(&[
            "run",
            "-d",
            "--null-io",
            "--env",
            "PATH=/bin",
            "--label",
            "crisp.io/kind=container",
            "--rootfs",
            rootfs,
            &id,
            "sleep",
            "1000",
        ])
        .unwrap();
    Container { id, address: stack.containerd_address().to_path_buf() }
}

async fn exec(stack: &Stack, id: &str, cmd: &[&str], timeout: i64) -> Result<ExecSyncResponse, tonic::Status> {
    let request =
        ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout };
    stack.runtime_client().exec_sync(request).await.map(|r| r.into_inner())
}

fn exec_dirs(stack: &Stack, id: &str) -> Vec<PathBuf> {
    match std::fs::read_dir(stack.dir().join("run/containers").join(id).join("exec")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => vec![],
    }
}

#[tokio::test]
async fn exec_sync_answers_stdout_stderr_and_the_exit_code() {
    let stack = Stack::start().await.unwrap();
    let container = running_container(&stack, "exec-out");
    let id = container.id.clone();

    let response = exec(&stack, &id, &["sh", "-c", "echo out; echo err >&2; exit 3"], 0).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&response.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&response.stderr), "err\n");
    assert_eq!(response.exit_code, 3);

    let response = exec(&stack, &id, &["cat", "/proc/1/cmdline"], 5).await.unwrap();
    assert_eq!(response.stdout, b"sleep\x001000\x00", "the exec runs in the container's PID namespace");
    assert_eq!(response.exit_code, 0);

    // A unique prefix of the id names the container too.
    let response = exec(&stack, &id[..6], &["true"], 0).await.unwrap();
    assert_eq!(response.exit_code, 0);

    // A timeout too far away to be a deadline is none.
    let response = exec(&stack, &id, &["true"], i64::MAX).await.unwrap();
    assert_eq!(response.exit_code, 0);

    // Output of a megabyte, whole.
    let response = exec(&stack, &id, &["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' a"], 0).await.unwrap();
    assert_eq!(response.stdout.len(), 1 << 20);
    assert!(response.stdout.iter().all(|b| *b == b'a'));

    assert!(exec_dirs(&stack, &id).is_empty(), "left behind: {:?}", exec_dirs(&stack, &id));

    // A command that does not exist: containerd's answer, not a hang.
    let err = exec(&stack, &id, &["/no/such/binary"], 5).await.unwrap_err();
    assert!(err.message().contains("no/such/binary"), "{err:?}");
}

#[tokio::test]
async fn a_timeout_kills_the_exec_and_answers_deadline_exceeded() {
    let stack = Stack::start().await.unwrap();
    let container = running_container(&stack, "exec-timeout");
    let id = container.id.clone();

    let started = Instant::now();
    let err = exec(&stack, &id, &["sleep", "77"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("timeout 1s"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());

    let ps = exec(&stack, &id, &["ps", "-o", "args"], 5).await.unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert!(!ps.contains("sleep 77"), "the timed-out process is still there:\n{ps}");
    assert!(ps.contains("sleep 1000"), "{ps}");

    // Cleaned up in the background once killed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exec_dirs(&stack, &id).is_empty() {
        assert!(Instant::now() < deadline, "left behind: {:?}", exec_dirs(&stack, &id));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn output_beyond_the_bound_kills_the_exec_and_says_so() {
    let stack = Stack::start().await.unwrap();
    let container = running_container(&stack, "exec-big");
    let id = container.id.clone();

    let err = exec(&stack, &id, &["sh", "-c", "while true; do cat /bin/busybox; done"], 60).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("stdout exceeded 16777216 bytes"), "{err:?}");

    let ps = exec(&stack, &id, &["ps", "-o", "args"], 5).await.unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert!(!ps.contains("while true"), "the exec is still there:\n{ps}");
}

#[tokio::test]
async fn exec_in_an_unknown_or_stopped_container_is_refused() {
    let stack = Stack::start().await.unwrap();

    let err = exec(&stack, "no-such-container", &["true"], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let id = &unique("exec-created");
    let rootfs = busybox_rootfs(&stack.dir().join(id));
    stack
        .ctr(&[
            "container",
            "create",
            "--label",
            "crisp.io/kind=container",
            "--rootfs",
            rootfs.to_str().unwrap(),
            id,
            "/bin/true",
        ])
        .unwrap();
    let err = exec(&stack, id, &["true"], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not running"), "{err:?}");

    let container = running_container(&stack, "exec-empty");
    let id = container.id.clone();
    let err = exec(&stack, &id, &[], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn a_caller_that_goes_away_leaves_no_exec_behind() {
    let stack = Stack::start().await.unwrap();
    let container = running_container(&stack, "exec-gone");
    let id = container.id.clone();

    let mut request = tonic::Request::new(ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["sleep".into(), "78".into()],
        timeout: 0,
    });
    request.set_timeout(Duration::from_secs(1));
    // The client gives up after a second (tonic says CANCELLED on its side).
    stack.runtime_client().exec_sync(request).await.unwrap_err();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = exec(&stack, &id, &["ps", "-o", "args"], 5).await.unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout).to_string();
        if !ps.contains("sleep 78") && exec_dirs(&stack, &id).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still there:\n{ps}\n{:?}", exec_dirs(&stack, &id));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_background_child_holding_the_output_does_not_hold_the_answer() {
    let stack = Stack::start().await.unwrap();
    let container = running_container(&stack, "exec-bg");
    let id = container.id.clone();

    let started = Instant::now();
    let response = exec(&stack, &id, &["sh", "-c", "echo started; sleep 30 &"], 0).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&response.stdout), "started\n");
    assert_eq!(response.exit_code, 0);
    assert!(started.elapsed() < Duration::from_secs(8), "answered after {:?}", started.elapsed());
}
