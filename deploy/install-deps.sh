#!/usr/bin/env bash
# Installs what crisp needs on a Debian node, from Debian's packages, when it is missing:
# containerd and runc (the runtime), the CNI plugins, iptables, protoc (to build), glibc's
# static libc (crisp's static pause binary, deploy/build-pause.sh), Debian's
# docker-registry, busybox-static and apache2-utils (for the tests' local registry and images).
# Idempotent; needs root. The Rust toolchain (cargo 1.88 or newer) must already be installed.
set -euo pipefail

packages=(
  containerd runc containernetworking-plugins iptables iproute2
  protobuf-compiler pkg-config ca-certificates libc6-dev
  docker-registry busybox-static apache2-utils openssl
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian starts a registry service with the package; crisp's tests run their own on free ports.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo is not installed; crisp needs Rust 1.88 or newer (rustup)" >&2
  exit 1
fi

# The tests' grpc-core client: Python's grpcio from PyPI, in a virtualenv of its own
# (tests/tests/proxy_clients.rs finds it there, or at $CRISP_TEST_PYTHON).
venv=/opt/crisp/test-venv
if ! "$venv/bin/python3" -c 'import grpc' 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    echo "install-deps: installing python3-venv"
    apt-get update -q
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends python3 python3-venv
  fi
  echo "install-deps: installing grpcio into $venv"
  mkdir -p "$(dirname "$venv")"
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check 'grpcio>=1.57'; }; then
    echo "install-deps: WARNING: could not install grpcio into $venv; tests/tests/proxy_clients.rs will fail" >&2
  fi
fi
