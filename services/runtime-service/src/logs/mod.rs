//! A container's stdio: the FIFOs containerd's shim writes the process's output to (and reads
//! its stdin from), and the writer that turns that output into the CRI log file the kubelet
//! reads (`<RFC3339Nano> <stream> <P|F> <line>`).
//!
//! INTERFACE (fixed; the `io` helper fills in the bodies, the container lifecycle calls them).
//!
//! Order of use: [`Fifos::create`] then [`LogWriter::open`] (read ends open, so the shim's
//! open of the write ends never blocks), then the containerd task is created with the FIFO
//! paths, then [`LogWriter::start`]. After a restart of the service: [`Fifos::existing`],
//! [`LogWriter::open`], [`LogWriter::start`] for every container whose task still exists.

use std::io;
use std::path::{Path, PathBuf};

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
    /// Makes `dir` and the FIFOs in it.
    pub fn create(dir: &Path, stdin: bool, tty: bool) -> io::Result<Fifos> {
        let _ = (dir, stdin, tty);
        Err(io::Error::other("not written yet"))
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

    /// Removes the FIFOs and their directory.
    pub fn remove(&self) -> io::Result<()> {
        Err(io::Error::other("not written yet"))
    }
}

/// Copies a container's output into its CRI log file.
pub struct LogWriter {}

impl LogWriter {
    /// Opens the FIFOs' read ends and the log file (`None`: the output is read and dropped).
    pub fn open(fifos: &Fifos, log_path: Option<PathBuf>, max_line_bytes: usize) -> io::Result<LogWriter> {
        let _ = (fifos, log_path, max_line_bytes);
        Err(io::Error::other("not written yet"))
    }

    /// Starts copying (once the task holds the write ends).
    pub fn start(&self) {}

    /// Opens the log file anew at its path (after the kubelet renamed the old one).
    pub async fn reopen(&self) -> io::Result<()> {
        Err(io::Error::other("not written yet"))
    }

    /// Waits until both streams ended and everything read is in the log file.
    pub async fn closed(&self) {}
}
