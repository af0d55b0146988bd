#!/usr/bin/env bash
# Benchmark: exec round trips and port-forward throughput through crisp vs containerd's own CRI
# plugin on this machine.
# Needs: containerd running with its CRI plugin at /run/containerd/containerd.sock (or pass
# --containerd-socket) whose sandbox image it can pull, Debian's docker-registry and
# busybox-static (the image both pull from a private loopback registry), root.
# Usage: tests/bench/streaming.sh [--execs N] [--megabytes N] [--containerd-socket PATH]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bins
cargo run --release -p crisp-e2e --example bench-streaming -- "$@"
