//! Container logs through the proxy socket, as the kubelet reads and rotates them: the CRI
//! log format with partial and full lines, stderr marked, the last line without newline kept;
//! ReopenContainerLog after a rename (a new file gets the later lines), refused for a stopped
//! or unknown container and when the log directory is gone, creating nothing then.

mod container_support;

use container_support::*;
use crisp_proto::cri::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

/// The log's lines as `(stream, tag, content)`, each timestamp checked.
fn entries(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let stamp = parts.next().unwrap();
            assert!(stamp.ends_with('Z') && stamp.contains('T') && stamp.contains('.'), "timestamp in {line:?}");
            let stream = parts.next().unwrap().to_string();
            let tag = parts.next().unwrap().to_string();
            (stream, tag, parts.next().unwrap_or("").to_string())
        })
        .collect()
}

/// Waits (up to 20 s) until the file at `path` holds a line `predicate` accepts; answers the text.
async fn wait_for_log(path: &Path, predicate: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(&predicate) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} never got the line; it holds:\n{text}", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_path(pod: &Pod, config: &ContainerConfig) -> PathBuf {
    PathBuf::from(&pod.config.log_directory).join(&config.log_path)
}

/// Deletes every task on the node when dropped: a shim would outlive the test's containerd.
struct DeleteTasks<'a>(&'a Node);

impl Drop for DeleteTasks<'_> {
    fn drop(&mut self) {
        let Ok(tasks) = self.0.stack.ctr(&["task", "list", "--quiet"]) else { return };
        for task in tasks.lines().filter(|t| !t.is_empty()) {
            let _ = self.0.stack.ctr(&["task", "delete", "--force", task]);
        }
    }
}

async fn reopen(node: &Node, id: &str) -> Result<(), tonic::Status> {
    node.runtime().reopen_container_log(ReopenContainerLogRequest { container_id: id.into() }).await.map(|_| ())
}

#[tokio::test]
async fn log_lines_are_marked_partial_or_full_by_stream() {
    let node = Node::start().await.unwrap();
    let _cleanup = DeleteTasks(&node);
    let pod = node.pod("logs").await.unwrap();
    // A 40 KiB line, a line on stderr, and a last line without newline.
    let script = "head -c 40960 /dev/zero | tr '\\0' a; echo; echo oops >&2; echo; printf 'bye'";
    let config = node.config("printer", &["sh", "-c", script]);
    let id = node.run(&pod, config.clone()).await.unwrap();
    node.wait_exited(&id).await.unwrap();
    let text = wait_for_log(&log_path(&pod, &config), |l| l.ends_with(" stdout P bye")).await;

    let entries = entries(&text);
    let stdout: Vec<_> = entries.iter().filter(|e| e.0 == "stdout").map(|e| (e.1.as_str(), e.2.len())).collect();
    assert_eq!(stdout, [("P", 16384), ("P", 16384), ("F", 8192), ("F", 0), ("P", 3)], "{entries:?}");
    assert!(entries.iter().filter(|e| e.0 == "stdout" && e.2.len() > 3).all(|e| e.2.bytes().all(|b| b == b'a')));
    let stderr: Vec<_> = entries.iter().filter(|e| e.0 == "stderr").collect();
    assert_eq!(stderr.len(), 1, "{entries:?}");
    assert_eq!((stderr[0].1.as_str(), stderr[0].2.as_str()), ("F", "oops"));
}

#[tokio::test]
async fn reopen_after_a_rename_sends_later_lines_to_a_new_file() {
    let node = Node::start().await.unwrap();
    let _cleanup = DeleteTasks(&node);
    let pod = node.pod("rotate").await.unwrap();
    let script = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05; done";
    let config = node.config("counter", &["sh", "-c", script]);
    let id = node.run(&pod, config.clone()).await.unwrap();
    let path = log_path(&pod, &config);
    wait_for_log(&path, |l| l.ends_with(" line 3")).await;

    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    reopen(&node, &id).await.unwrap();
    let text = wait_for_log(&path, |l| l.contains(" stdout F line ")).await;

    // Every line is in one file or the other, in order, none twice.
    let number = |e: &(String, String, String)| e.2.strip_prefix("line ").unwrap().parse::<u64>().unwrap();
    let old: Vec<u64> = entries(&std::fs::read_to_string(&rotated).unwrap()).iter().map(number).collect();
    let new: Vec<u64> = entries(&text).iter().map(number).collect();
    assert_eq!(old[0], 0);
    assert_eq!(new[0], old.last().unwrap() + 1, "old {old:?} new {new:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777 & !0o640, 0, "mode {mode:o}");

    // A unique prefix of the id names the container too.
    reopen(&node, &id[..12]).await.unwrap();

    // Stopped: refused, and a renamed file is not made again.
    node.stop(&id, 0).await.unwrap();
    std::fs::rename(&path, path.with_extension("log.2")).unwrap();
    let err = reopen(&node, &id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not running"), "{err:?}");
    assert!(!path.exists());

    let err = reopen(&node, "no-such-container").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn reopen_into_a_missing_directory_fails_and_the_old_file_keeps_the_lines() {
    let node = Node::start().await.unwrap();
    let _cleanup = DeleteTasks(&node);
    let pod = node.pod("gone").await.unwrap();
    let script = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05; done";
    let config = node.config("counter", &["sh", "-c", script]);
    let id = node.run(&pod, config.clone()).await.unwrap();
    let path = log_path(&pod, &config);
    wait_for_log(&path, |l| l.ends_with(" line 1")).await;

    let moved = node.stack.dir().join("moved-logs");
    std::fs::rename(&pod.config.log_directory, &moved).unwrap();
    let err = reopen(&node, &id).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(!Path::new(&pod.config.log_directory).exists(), "the directory was made again");
    let before = std::fs::read_to_string(moved.join(&config.log_path)).unwrap().lines().count();
    wait_for_log(&moved.join(&config.log_path), |l| l.ends_with(&format!(" line {}", before + 2))).await;
    node.stop(&id, 0).await.unwrap();
}

#[tokio::test]
async fn the_line_limit_is_the_configured_one() {
    let options = crisp_testkit::StackOptions {
        env: vec![("CRISP_RUNTIME_MAX_CONTAINER_LOG_LINE_SIZE".into(), "1000".into())],
        ..Default::default()
    };
    let node = Node::start_with(options).await.unwrap();
    let _cleanup = DeleteTasks(&node);
    let pod = node.pod("limit").await.unwrap();
    let config = node.config("printer", &["sh", "-c", "head -c 2500 /dev/zero | tr '\\0' b; echo"]);
    let id = node.run(&pod, config.clone()).await.unwrap();
    node.wait_exited(&id).await.unwrap();
    let text = wait_for_log(&log_path(&pod, &config), |l| l.contains(" stdout F ")).await;
    let lines: Vec<_> = entries(&text).into_iter().map(|e| (e.1, e.2.len())).collect();
    assert_eq!(lines, [("P".to_string(), 1000), ("P".to_string(), 1000), ("F".to_string(), 500)]);
}
