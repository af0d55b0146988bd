#!/usr/bin/env bash
# Builds crisp's pause binary static (glibc's libc.a, from libc6-dev) and prints its path:
# target/x86_64-unknown-linux-gnu/release/crisp-pause. `+crt-static` cannot be set for one
# package of a workspace, so it has a cargo invocation of its own; with an explicit --target,
# RUSTFLAGS do not reach build scripts. Extra arguments go to cargo (e.g. --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static -C strip=symbols' \
  cargo build -q -p crisp-pause --release --target "$target" "$@"
binary="target/$target/release/crisp-pause"
if [[ "$(ldd "$binary" 2>&1 || true)" != *"not a dynamic executable"* ]]; then
  echo "build-pause: $binary is not static" >&2
  exit 1
fi
echo "$binary"
