#!/usr/bin/env bash
# Benchmark: a cold pull through crisp's image service vs containerd's own CRI plugin.
# Needs: containerd running with its CRI plugin at /run/containerd/containerd.sock (or pass
# --containerd-socket), docker-registry and busybox-static installed, root.
# Two images: five layers (busybox + 5 x 40 MiB of /usr files), then one layer of 200 MiB.
# Usage: tests/bench/pull.sh [--runs N] [--containerd-socket PATH]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bins
echo "== five layers"
cargo run --release -p crisp-e2e --example bench-pull -- "$@"
echo "== one large layer"
cargo run --release -p crisp-e2e --example bench-pull -- --one-layer "$@"
echo "load: $(uptime)"
