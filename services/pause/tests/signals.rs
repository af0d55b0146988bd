//! The pause binary as a process: it sleeps until SIGTERM or SIGINT, then exits 0.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn start() -> Child {
    Command::new(env!("CARGO_BIN_EXE_crisp-pause")).spawn().unwrap()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

/// The exit status within 5 s, or None if it still runs.
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn it_sleeps_through_other_signals_and_exits_0_on_sigterm_or_sigint() {
    for stop in ["TERM", "INT"] {
        let mut pause = start();
        std::thread::sleep(Duration::from_millis(200));
        // SIGCHLD (no child to reap) and SIGWINCH change nothing.
        signal(&pause, "CHLD");
        signal(&pause, "WINCH");
        assert!(exit_within(&mut pause, Duration::from_millis(300)).is_none(), "exited before SIG{stop}");
        signal(&pause, stop);
        let status = exit_within(&mut pause, Duration::from_secs(5)).expect("exits after the signal");
        assert_eq!(status.code(), Some(0), "SIG{stop}");
    }
}

#[test]
fn it_prints_its_version() {
    let output = Command::new(env!("CARGO_BIN_EXE_crisp-pause")).arg("-v").output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), format!("crisp-pause {}", env!("CARGO_PKG_VERSION")));
}

fn children(pid: u32) -> Vec<u32> {
    let dir = format!("/proc/{pid}/task");
    let Ok(tasks) = std::fs::read_dir(dir) else { return vec![] };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

#[test]
fn as_pid_1_of_a_pid_namespace_it_reaps_the_orphans_left_to_it() {
    // PID 1 of a new PID namespace (root only: skipped elsewhere).
    let Ok(mut unshare) =
        Command::new("unshare").args(["--pid", "--fork"]).arg(env!("CARGO_BIN_EXE_crisp-pause")).spawn()
    else {
        return;
    };
    let mut pause = None;
    for _ in 0..100 {
        pause = children(unshare.id()).first().copied();
        if pause.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(pause) = pause else {
        let _ = unshare.kill();
        eprintln!("skipped: unshare --pid did not start the pause binary (not root?)");
        return;
    };
    // A shell in its namespace leaves a short sleep behind: the orphan becomes pause's child.
    let status = Command::new("nsenter")
        .args(["--target", &pause.to_string(), "--pid", "--", "sh", "-c", "sleep 0.3 & exit 0"])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(children(pause).len(), 1, "the orphaned sleep is pause's child");
    // Once it exits, pause reaps it: no zombie is left.
    let start = Instant::now();
    while !children(pause).is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(children(pause).is_empty(), "zombies left: {:?}", children(pause));
    let _ = Command::new("kill").arg(pause.to_string()).status();
    let status = exit_within(&mut unshare, Duration::from_secs(5)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}
