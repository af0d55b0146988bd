#!/usr/bin/env bash
# Benchmark: memory per pod (runtime + shims + pause processes, PSS) at N pods with 0, 1 and 3
# containers each, through crisp and containerd's own CRI plugin on this machine (issue 14).
# Needs: containerd running with its CRI plugin at /run/containerd/containerd.sock (or pass
# --containerd-socket) whose sandbox image it can pull, Debian's docker-registry and
# busybox-static (the image both pull from a private loopback registry), root.
# Usage: tests/bench/shims.sh [--pods N] [--containerd-socket PATH]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bins
cargo run --release -p crisp-e2e --example bench-shims -- "$@"
