#!/usr/bin/env bash
# Benchmark: pod sandboxes through crisp vs containerd's own CRI plugin, same CNI network.
# Needs: containerd running with its CRI plugin at /run/containerd/containerd.sock (or pass
# --containerd-socket) whose sandbox image it can pull, a CNI conflist in /etc/cni/net.d,
# Debian's CNI plugins, root.
# Usage: tests/bench/sandbox.sh [--pods N] [--containerd-socket PATH] [--cni-conf FILE]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bins
cargo run --release -p crisp-e2e --example bench-sandbox -- "$@"
