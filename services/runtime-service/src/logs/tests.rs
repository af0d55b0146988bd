//! The log writer against real FIFOs with a shell writing to them, as the shim would.

use super::*;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

struct Setup {
    dir: tempfile::TempDir,
    fifos: Fifos,
    log: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let fifos = Fifos::create(&dir.path().join("io"), false, false).unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/0.log");
    Setup { dir, fifos, log }
}

/// `script` run by `sh` with stdout and stderr on the FIFOs, as the shim's process would be.
fn writer(fifos: &Fifos, script: &str) -> tokio::process::Child {
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec >\"$OUT\" 2>\"$ERR\"; {script}"))
        .env("OUT", &fifos.stdout)
        .env("ERR", fifos.stderr.as_ref().unwrap())
        .spawn()
        .unwrap()
}

/// The log file's lines without their timestamps: `<stream> <tag> <content>`.
fn lines_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let (stamp, rest) = line.split_once(' ').unwrap();
            assert!(humantime::parse_rfc3339(stamp).is_ok(), "timestamp of {line:?}");
            rest.to_string()
        })
        .collect()
}

async fn closed(writer: &LogWriter) {
    tokio::time::timeout(Duration::from_secs(10), writer.closed()).await.expect("the writer closed");
}

#[tokio::test]
async fn full_lines_then_a_last_line_without_newline_marked_partial() {
    let s = setup();
    let w = LogWriter::open(&s.fifos, Some(s.log.clone()), 16 * 1024).unwrap();
    w.start();
    let mut child = writer(&s.fifos, "printf 'one\\ntwo\\r\\n\\nlast'");
    closed(&w).await;
    child.wait().await.unwrap();
    assert_eq!(lines_of(&s.log), ["stdout F one", "stdout F two", "stdout F ", "stdout P last"]);
}

#[tokio::test]
async fn a_line_longer_than_the_limit_is_split_into_partial_lines() {
    let s = setup();
    let w = LogWriter::open(&s.fifos, Some(s.log.clone()), 10).unwrap();
    w.start();
    let mut child = writer(&s.fifos, "printf '%025d\\n' 7");
    closed(&w).await;
    child.wait().await.unwrap();
    assert_eq!(lines_of(&s.log), ["stdout P 0000000000", "stdout P 0000000000", "stdout F 00007"]);
}

#[tokio::test]
async fn stdout_and_stderr_share_the_file_in_the_order_written() {
    let s = setup();
    let w = LogWriter::open(&s.fifos, Some(s.log.clone()), 16 * 1024).unwrap();
    w.start();
    let mut child =
        writer(&s.fifos, "echo out1; sleep 0.1; echo err1 >&2; sleep 0.1; echo out2; sleep 0.1; printf err2 >&2");
    closed(&w).await;
    child.wait().await.unwrap();
    assert_eq!(lines_of(&s.log), ["stdout F out1", "stderr F err1", "stdout F out2", "stderr P err2"]);
}

#[tokio::test]
async fn the_log_file_is_appended_to_with_mode_0640() {
    let s = setup();
    let w = LogWriter::open(&s.fifos, Some(s.log.clone()), 0).unwrap();
    w.start();
    let mut child = writer(&s.fifos, "echo hi");
    closed(&w).await;
    child.wait().await.unwrap();
    let mode = std::fs::metadata(&s.log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "mode {mode:o}");

    // A second writer (the service restarted) appends.
    let w = LogWriter::open(&s.fifos, Some(s.log.clone()), 0).unwrap();
    w.start();
    let mut child = writer(&s.fifos, "echo again");
    closed(&w).await;
    child.wait().await.unwrap();
    assert_eq!(lines_of(&s.log), ["stdout F hi", "stdout F again"]);
}

#[tokio::test]
async fn reopen_after_a_rename_sends_later_lines_to_a_new_file() {
    let s = setup();
    let w = LogWriter::open(&s.fifos, Some(s.log.clone()), 16 * 1024).unwrap();
    w.start();
    let go = s.dir.path().join("go");
    let script = format!("echo before; while [ ! -e '{}' ]; do sleep 0.02; done; echo after", go.display());
    let mut child = writer(&s.fifos, &script);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&s.log).unwrap_or_default().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the first line never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rotated = s.dir.path().join("logs/0.log.1");
    std::fs::rename(&s.log, &rotated).unwrap();
    w.reopen().await.unwrap();
    std::fs::write(&go, "").unwrap();
    closed(&w).await;
    child.wait().await.unwrap();
    assert_eq!(lines_of(&rotated), ["stdout F before"]);
    assert_eq!(lines_of(&s.log), ["stdout F after"]);
}

#[tokio::test]
async fn a_failed_reopen_creates_nothing_and_keeps_the_old_file() {
    let s = setup();
    let w = LogWriter::open(&s.fifos, Some(s.log.clone()), 16 * 1024).unwrap();
    w.start();
    let go = s.dir.path().join("go");
    let script = format!("echo before; while [ ! -e '{}' ]; do sleep 0.02; done; echo after", go.display());
    let mut child = writer(&s.fifos, &script);
    let moved = s.dir.path().join("moved");
    std::fs::rename(s.dir.path().join("logs"), &moved).unwrap();
    let err = w.reopen().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(!s.log.exists() && !s.dir.path().join("logs").exists());
    std::fs::write(&go, "").unwrap();
    closed(&w).await;
    child.wait().await.unwrap();
    assert_eq!(lines_of(&moved.join("0.log")), ["stdout F before", "stdout F after"]);

    // Once the output ended, reopening is an error too.
    assert!(w.reopen().await.is_err());
}

#[tokio::test]
async fn a_log_path_in_a_missing_directory_is_an_error_and_creates_nothing() {
    let s = setup();
    let log = s.dir.path().join("nowhere/0.log");
    let err = LogWriter::open(&s.fifos, Some(log.clone()), 16).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("nowhere"), "{err}");
    assert!(!s.dir.path().join("nowhere").exists());
}

#[tokio::test]
async fn output_written_just_before_exit_is_all_in_the_file() {
    let s = setup();
    let w = LogWriter::open(&s.fifos, Some(s.log.clone()), 16 * 1024).unwrap();
    w.start();
    // Far more than a pipe holds, written by a process that exits at once.
    let mut child = writer(&s.fifos, "seq 1 200000; seq 1 1000 >&2");
    child.wait().await.unwrap();
    closed(&w).await;
    let lines = lines_of(&s.log);
    let out: Vec<_> = lines.iter().filter(|l| l.starts_with("stdout F ")).collect();
    let err: Vec<_> = lines.iter().filter(|l| l.starts_with("stderr F ")).collect();
    assert_eq!(out.len(), 200000);
    assert_eq!(out.last().unwrap().as_str(), "stdout F 200000");
    assert_eq!(err.len(), 1000);
}

#[tokio::test]
async fn no_end_is_seen_before_a_writer_connected() {
    let s = setup();
    let w = LogWriter::open(&s.fifos, Some(s.log.clone()), 16 * 1024).unwrap();
    w.start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!w.is_closed(), "closed before the shim ever opened the FIFOs");
    let mut child = writer(&s.fifos, "echo late");
    closed(&w).await;
    child.wait().await.unwrap();
    assert_eq!(lines_of(&s.log), ["stdout F late"]);
}

#[tokio::test]
async fn subscribers_get_the_raw_output_and_its_end() {
    let s = setup();
    let w = LogWriter::open(&s.fifos, None, 16 * 1024).unwrap();
    let mut sub = w.subscribe();
    w.start();
    let mut child = writer(&s.fifos, "printf 'raw\\r\\n'");
    closed(&w).await;
    child.wait().await.unwrap();
    let mut stdout = Vec::new();
    let mut ended = 0;
    while let Ok(output) = sub.try_recv() {
        if output.data.is_empty() {
            ended += 1;
        } else {
            assert_eq!(output.stream, Stream::Stdout);
            stdout.extend_from_slice(&output.data);
        }
    }
    assert_eq!(stdout, b"raw\r\n");
    assert_eq!(ended, 2);
}

#[test]
fn fifos_are_made_and_removed_with_their_directory() {
    let dir = tempfile::tempdir().unwrap();
    let io_dir = dir.path().join("a/b/io");
    let fifos = Fifos::create(&io_dir, true, true).unwrap();
    assert!(fifos.stderr.is_none());
    for path in [fifos.stdin.as_ref().unwrap(), &fifos.stdout] {
        assert!(std::fs::metadata(path).unwrap().file_type().is_fifo());
    }
    // Made again over the old ones: fine.
    Fifos::create(&io_dir, true, true).unwrap();
    fifos.remove().unwrap();
    assert!(!io_dir.exists());
    fifos.remove().unwrap();
}

#[tokio::test]
async fn a_stuck_disk_holds_the_container_up_only_beyond_the_buffer() {
    let s = setup();
    // The "disk": a FIFO nobody reads until the end, so every write to it soon blocks.
    nix::unistd::mkfifo(&s.log, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
    let stuck = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&s.log).unwrap();
    let w = LogWriter::open(&s.fifos, Some(s.log.clone()), 16 * 1024).unwrap();
    w.start();
    let marker = s.dir.path().join("first-megabyte-written");
    let script = format!(
        "head -c 1048576 /dev/zero | tr '\\0' x; echo; touch '{}'; head -c 16777216 /dev/zero | tr '\\0' y; echo",
        marker.display()
    );
    let mut child = writer(&s.fifos, &script);

    // A megabyte fits in the buffer: written although nothing reaches the disk.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(tokio::time::Instant::now() < deadline, "the first megabyte blocked the writer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Sixteen more do not: the writer waits for the disk.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(child.try_wait().unwrap().is_none(), "16 MiB went into the buffer");

    // The disk recovers: everything arrives, in order.
    let mut disk = std::fs::File::open(&s.log).unwrap();
    drop(stuck);
    let reader = tokio::task::spawn_blocking(move || {
        let mut text = Vec::new();
        disk.read_to_end(&mut text).unwrap();
        text
    });
    child.wait().await.unwrap();
    closed(&w).await;
    let text = String::from_utf8(reader.await.unwrap()).unwrap();
    let contents: String = text.lines().map(|l| l.splitn(4, ' ').nth(3).unwrap()).collect();
    assert_eq!(contents.len(), 1048576 + 16777216);
    assert!(contents[..1048576].bytes().all(|b| b == b'x'));
    assert!(contents[1048576..].bytes().all(|b| b == b'y'));
}
