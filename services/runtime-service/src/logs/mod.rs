//! A container's stdio: the FIFOs containerd's shim writes the process's output to (and reads
//! its stdin from), and the writer that turns that output into the CRI log file the kubelet
//! reads (`<RFC3339Nano> <stream> <P|F> <line>`, see [`lines`]).
//!
//! Order of use: [`Fifos::create`] then [`LogWriter::open`] (read ends open, so the shim's
//! open of the write ends never blocks), then the containerd task is created with the FIFO
//! paths, then [`LogWriter::start`]. After a restart of the service: [`Fifos::existing`],
//! [`LogWriter::open`], [`LogWriter::start`] for every container whose task still exists (the
//! shim keeps a read end of its own, so output written meanwhile waits in the FIFO).
//!
//! Contract: stdout and stderr go into one file, line by line in the order they were read;
//! the file is opened for appending with mode 0640 and never created where its directory is
//! missing. Between the FIFOs and the disk sits a bounded buffer ([`BUFFER_BYTES`] of log
//! lines): a slow disk holds the container up only once it is full. A failed write is logged and the
//! output still drained. A FIFO's read end sees end-of-file only once every writer closed it,
//! after the bytes still in it are read, so [`LogWriter::closed`] resolves when the shim closed
//! both streams and everything they carried is in the file.

pub mod lines;
pub mod reopen;

pub use lines::Stream;
pub use reopen::Writers;

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};

/// Bytes of log lines read from the FIFOs and not yet written to the log file: what a slow
/// disk may fall behind by before the container's writes block.
pub const BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// The most bytes one read from a FIFO takes.
const READ_SIZE: usize = 64 * 1024;
/// Raw chunks a subscriber may fall behind by before it misses some ([`LogWriter::subscribe`]).
const FAN_OUT_CHUNKS: usize = 1024;

/// A container's (or an exec's) FIFOs, in a directory the runtime service owns.
#[derive(Debug, Clone)]
pub struct Fifos {
    pub dir: PathBuf,
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    /// None with a TTY (the terminal merges both streams into stdout).
    pub stderr: Option<PathBuf>,
}

impl Fifos {
    /// Makes `dir` (mode 0700, with its parents) and the FIFOs in it (mode 0600). FIFOs left
    /// there earlier are kept.
    pub fn create(dir: &Path, stdin: bool, tty: bool) -> io::Result<Fifos> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| with_path(e, "creating the FIFO directory", dir))?;
        let fifos = Fifos::existing(dir, stdin, tty);
        for path in fifos.stdin.iter().chain([&fifos.stdout]).chain(fifos.stderr.iter()) {
            make_fifo(path)?;
        }
        Ok(fifos)
    }

    /// The FIFOs [`Fifos::create`] made in `dir` earlier.
    pub fn existing(dir: &Path, stdin: bool, tty: bool) -> Fifos {
        Fifos {
            dir: dir.to_path_buf(),
            stdin: stdin.then(|| dir.join("stdin")),
            stdout: dir.join("stdout"),
            stderr: (!tty).then(|| dir.join("stderr")),
        }
    }

    /// Removes the FIFOs and their directory; a directory already gone is fine.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(e, "removing", &self.dir)),
            _ => Ok(()),
        }
    }
}

fn make_fifo(path: &Path) -> io::Result<()> {
    use nix::sys::stat::Mode;
    match nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo()) => Ok(()),
        Err(e) => Err(with_path(e.into(), "making the FIFO", path)),
    }
}

fn with_path(err: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{doing} {}: {err}", path.display()))
}

/// A piece of a container's output as it was read, for a subscriber (attach).
#[derive(Debug, Clone)]
pub struct Output {
    pub stream: Stream,
    /// The bytes; empty once the stream ended.
    pub data: Arc<[u8]>,
}

/// What the stream readers tell the file writer.
enum ToFile {
    /// Lines, holding their share of [`BUFFER_BYTES`] until written.
    Lines(Vec<u8>, Option<OwnedSemaphorePermit>),
    Ended,
    Reopen(oneshot::Sender<io::Result<()>>),
}

/// Copies a container's output into its CRI log file.
pub struct LogWriter {
    /// The FIFOs' read ends until [`LogWriter::start`] hands them to their copiers.
    readers: Mutex<Vec<(Stream, pipe::Receiver)>>,
    max_line_bytes: usize,
    to_file: mpsc::UnboundedSender<ToFile>,
    /// [`BUFFER_BYTES`] as permits, one a byte.
    budget: Arc<Semaphore>,
    output: broadcast::Sender<Output>,
    done: watch::Receiver<bool>,
}

impl LogWriter {
    /// Opens the FIFOs' read ends and the log file (`None`: the output is read and dropped).
    /// `max_line_bytes`: the longest line written whole, 0 for no limit. A log path whose
    /// directory is missing is an error (`NotFound`) and creates nothing.
    pub fn open(fifos: &Fifos, log_path: Option<PathBuf>, max_line_bytes: usize) -> io::Result<LogWriter> {
        let file = log_path.as_deref().map(open_log).transpose()?;
        let mut readers = vec![(Stream::Stdout, open_reader(&fifos.stdout)?)];
        if let Some(stderr) = &fifos.stderr {
            readers.push((Stream::Stderr, open_reader(stderr)?));
        }
        let (to_file, from_readers) = mpsc::unbounded_channel();
        let (done_tx, done) = watch::channel(false);
        let file = file.map(tokio::fs::File::from_std);
        tokio::spawn(write_file(from_readers, file, log_path, readers.len(), done_tx));
        Ok(LogWriter {
            readers: Mutex::new(readers),
            max_line_bytes,
            to_file,
            budget: Arc::new(Semaphore::new(BUFFER_BYTES)),
            output: broadcast::channel(FAN_OUT_CHUNKS).0,
            done,
        })
    }

    /// Starts copying (once the task holds the write ends). A second call does nothing.
    pub fn start(&self) {
        let readers = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|e| e.into_inner()));
        for (stream, reader) in readers {
            let splitter = lines::Splitter::new(stream, self.max_line_bytes);
            let to_file = ToWriter { lines: self.to_file.clone(), budget: self.budget.clone() };
            tokio::spawn(copy_stream(reader, splitter, stream, to_file, self.output.clone()));
        }
    }

    /// Opens the log file anew at its path (after the kubelet renamed the old one); later lines
    /// go there. On error the old file stays in use and nothing is created. An error too once
    /// the output ended.
    pub async fn reopen(&self) -> io::Result<()> {
        let ended = || io::Error::new(io::ErrorKind::BrokenPipe, "the container's output has ended");
        let (reply, answer) = oneshot::channel();
        self.to_file.send(ToFile::Reopen(reply)).map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }

    /// The raw output as it is read, from now on, for attach. A subscriber that falls more than
    /// [`FAN_OUT_CHUNKS`] chunks behind misses some (`Lagged`); the log file never does.
    pub fn subscribe(&self) -> broadcast::Receiver<Output> {
        self.output.subscribe()
    }

    /// Waits until both streams ended and everything read is in the log file.
    pub async fn closed(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|done| *done).await;
    }

    /// Whether both streams ended and everything read is in the log file.
    pub fn is_closed(&self) -> bool {
        *self.done.borrow()
    }
}

fn open_log(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| with_path(e, "opening the log file", path))
}

fn open_reader(path: &Path) -> io::Result<pipe::Receiver> {
    pipe::OpenOptions::new().open_receiver(path).map_err(|e| with_path(e, "opening the FIFO", path))
}

/// A stream copier's way to the file writer.
struct ToWriter {
    lines: mpsc::UnboundedSender<ToFile>,
    budget: Arc<Semaphore>,
}

impl ToWriter {
    /// Hands `lines` over once the buffer has room for them (the back pressure on the container).
    async fn send(&self, lines: Vec<u8>) {
        let bytes = u32::try_from(lines.len().min(BUFFER_BYTES)).unwrap_or(u32::MAX);
        let permit = self.budget.clone().acquire_many_owned(bytes).await.ok();
        // The writer only goes away with the whole log writer; the output is drained regardless.
        let _ = self.lines.send(ToFile::Lines(lines, permit));
    }
}

/// One stream: FIFO → lines → file writer, and the raw chunks to subscribers.
async fn copy_stream(
    mut reader: pipe::Receiver,
    mut splitter: lines::Splitter,
    stream: Stream,
    to_file: ToWriter,
    output: broadcast::Sender<Output>,
) {
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(stream = stream.as_str(), error = %e, "reading the container's output failed");
                break;
            }
        };
        let _ = output.send(Output { stream, data: Arc::from(&buf[..n]) });
        let mut lines = Vec::with_capacity(n + 128);
        splitter.push(&buf[..n], SystemTime::now(), &mut lines);
        if !lines.is_empty() {
            to_file.send(lines).await;
        }
    }
    let mut lines = Vec::new();
    splitter.finish(SystemTime::now(), &mut lines);
    if !lines.is_empty() {
        to_file.send(lines).await;
    }
    let _ = output.send(Output { stream, data: Arc::from(&[][..]) });
    let _ = to_file.lines.send(ToFile::Ended);
}

/// The log file's one writer: lines in arrival order, reopens between them.
async fn write_file(
    mut from_readers: mpsc::UnboundedReceiver<ToFile>,
    mut file: Option<tokio::fs::File>,
    path: Option<PathBuf>,
    mut streams: usize,
    done: watch::Sender<bool>,
) {
    let mut failing = false;
    while streams > 0 {
        let Some(message) = from_readers.recv().await else { return };
        match message {
            ToFile::Lines(lines, _permit) => {
                let Some(f) = file.as_mut() else { continue };
                let written = async {
                    f.write_all(&lines).await?;
                    f.flush().await
                };
                match written.await {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        let path = path.as_deref().unwrap_or(Path::new("")).display().to_string();
                        tracing::warn!(%path, error = %e, "writing the container's log failed; its output is dropped until a write succeeds");
                    }
                    Err(_) => {}
                }
            }
            ToFile::Ended => streams -= 1,
            ToFile::Reopen(reply) => {
                let reopened = match &path {
                    None => Ok(()),
                    Some(path) => {
                        let path = path.clone();
                        match tokio::task::spawn_blocking(move || open_log(&path)).await {
                            Ok(Ok(new)) => {
                                file = Some(tokio::fs::File::from_std(new));
                                failing = false;
                                Ok(())
                            }
                            Ok(Err(e)) => Err(e),
                            Err(e) => Err(io::Error::other(e)),
                        }
                    }
                };
                let _ = reply.send(reopened);
            }
        }
    }
    done.send_replace(true);
}

#[cfg(test)]
mod tests;
