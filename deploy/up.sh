#!/usr/bin/env bash
# Brings a crisp node stack up on this machine, on the default config (or $CRISP_CONFIG):
# installs what is missing, starts containerd if it is not running, builds crisp, starts the
# runtime, image and streaming services and the proxy, waits until the CRI socket answers, and
# stops everything it started on Ctrl-C. Logs go to /var/log/crisp/. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh

log_dir=/var/log/crisp
mkdir -p "$log_dir" /run/crisp
started=()

stop_all() {
  trap - INT TERM EXIT
  echo
  echo "up: stopping"
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do
    kill -TERM "${started[$i]}" 2>/dev/null || true
  done
  for pid in "${started[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  echo "up: stopped"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap stop_all EXIT

# containerd: use the running one, else start it (with systemd when the machine has it).
containerd_sock=/run/containerd/containerd.sock
if ! ctr --address "$containerd_sock" version >/dev/null 2>&1; then
  if [ -d /run/systemd/system ]; then
    systemctl start containerd
  else
    echo "up: starting containerd (log: $log_dir/containerd.log)"
    containerd >>"$log_dir/containerd.log" 2>&1 &
    started+=($!)
  fi
  for _ in $(seq 100); do ctr --address "$containerd_sock" version >/dev/null 2>&1 && break; sleep 0.2; done
  ctr --address "$containerd_sock" version >/dev/null || { echo "up: containerd does not answer" >&2; exit 1; }
fi

# A pod network when the node has none: a bridge with host-local addresses.
if [ -z "$(ls /etc/cni/net.d/*.conf* /etc/cni/net.d/*.json 2>/dev/null)" ]; then
  mkdir -p /etc/cni/net.d
  cp deploy/cni/10-crisp-bridge.conflist /etc/cni/net.d/
  echo "up: installed the pod network /etc/cni/net.d/10-crisp-bridge.conflist"
fi

echo "up: building crisp (release)"
cargo build --release --bins -q
bin=target/release
# The pause binary, static, where runtime.pause_binary expects it by default.
install -D -m 0755 "$(./deploy/build-pause.sh)" /usr/local/libexec/crisp/crisp-pause

for service in crisp-runtime crisp-image crisp-streaming crisp-proxy; do
  "$bin/$service" >>"$log_dir/$service.log" 2>&1 &
  started+=($!)
done

socket=$("$bin/crisp-probe" --print-socket)
if ! "$bin/crisp-probe" --wait 60s "$socket"; then
  echo "up: the CRI socket does not answer; see $log_dir/" >&2
  exit 1
fi
echo "up: crisp serves CRI on unix://$socket (logs: $log_dir/). Ctrl-C stops it."
wait -n "${started[@]}" || true
echo "up: a service exited; see $log_dir/" >&2
