#!/usr/bin/env bash
# Runs every crisp test, unit and end-to-end, on this machine as root. Installs what the tests
# need from Debian's packages first; the end-to-end tests start their own containerd, crisp
# services and registry on temp dirs, so nothing else needs to be running.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh

# The end-to-end tests run the service binaries: build them first, in the tests' profile.
cargo build --workspace --bins --locked
# crisp's pause binary, static (its own cargo invocation); the test kit gives its path to the runtime.
./deploy/build-pause.sh --locked >/dev/null

if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
