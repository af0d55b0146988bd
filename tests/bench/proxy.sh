#!/usr/bin/env bash
# Benchmark: the latency the front proxy adds to a small unary call (ListImages, Version),
# calling each backend straight and through the proxy in one run. Release build.
# Needs: containerd installed (deploy/install-deps.sh), root.
# Usage: tests/bench/proxy.sh [--calls N] [--metrics]   (--metrics: the proxy serves metrics)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bins
cargo run --release -p crisp-e2e --example bench-proxy -- "$@"
