//! `crisp-pause`: the infra process of a pod that needs one (a PID namespace shared by its
//! containers, or `runtime.infra_container = "always"`).
//!
//! It is PID 1 of the pod's PID namespace: it reaps every child re-parented to it, exits 0 on
//! SIGINT or SIGTERM, and otherwise sleeps. The signals are blocked and taken with `sigwait`,
//! so no handler runs and no `unsafe` is needed. `-v` prints its version. Built static
//! (`+crt-static`, see `deploy/build-pause.sh`) and put into containerd by the runtime service
//! as crisp's own sandbox image.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use std::process::ExitCode;

/// Reaps every child that has exited; returns when none is left to reap now.
fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("crisp-pause {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        signals.add(signal);
    }
    if let Err(err) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None) {
        eprintln!("crisp-pause: blocking signals: {err}");
        return ExitCode::FAILURE;
    }
    // Children that exited before the mask was set.
    reap();
    loop {
        match signals.wait() {
            Ok(Signal::SIGINT | Signal::SIGTERM) => {
                eprintln!("crisp-pause: shutting down");
                return ExitCode::SUCCESS;
            }
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => {}
            Err(err) => {
                eprintln!("crisp-pause: sigwait: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
}
