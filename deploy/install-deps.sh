#!/usr/bin/env bash
# Installs what crisp needs on a Debian node, from Debian's packages, when it is missing:
# containerd and runc (the runtime), the CNI plugins, iptables, protoc (to build), Debian's
# docker-registry, busybox-static and apache2-utils (for the tests' local registry and images).
# Idempotent; needs root. The Rust toolchain (cargo 1.88 or newer) must already be installed.
set -euo pipefail

packages=(
  containerd runc containernetworking-plugins iptables iproute2
  protobuf-compiler pkg-config ca-certificates
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
