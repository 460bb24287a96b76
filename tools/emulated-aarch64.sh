#!/usr/bin/env bash
# An emulated aarch64 board for `graphopt compile --arch aarch64 --rpc`: Debian's arm64
# python3.11 unpacked into a sysroot (no install), the aarch64 wheels of TVM in it, run
# under qemu-user as TVM's RPC server on the loopback address.
#
#   tools/emulated-aarch64.sh setup            # install/prepare everything (idempotent)
#   tools/emulated-aarch64.sh start [PORT]     # setup if needed, start the server, wait until it answers
#   tools/emulated-aarch64.sh start PORT TRACKER_HOST:PORT KEY   # the same, registered at a tracker
#   tools/emulated-aarch64.sh tracker PORT     # a TVM RPC tracker (host python, needs tornado)
#   tools/emulated-aarch64.sh status [PORT]    # "running on 127.0.0.1:PORT (pid N)" or "stopped" (exit 1)
#   tools/emulated-aarch64.sh stop  [PORT]     # stop the server started by `start`
#   tools/emulated-aarch64.sh python ARGS...   # run the device's python under qemu
#
# Environment: GRAPHOPT_DEVICE_ROOT (default ~/.cache/graphopt/emulated-aarch64) holds the
# sysroot, the wheels and the server's pid/log files; PYTHON is the host python that has
# TVM (default: python3 on PATH) and checks readiness with a real tvm.rpc.connect session.
# Timings under qemu say nothing about a real board: use this board to check correctness
# and the tuning plumbing, never to rank schedules.
set -euo pipefail

ROOT="${GRAPHOPT_DEVICE_ROOT:-$HOME/.cache/graphopt/emulated-aarch64}"
SYSROOT="$ROOT/sysroot"
SITE="$ROOT/site-packages"
WHEELS="$ROOT/wheels"
HOST_PY="${PYTHON:-python3}"
TVM_PINS=(apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy ml_dtypes psutil cloudpickle typing_extensions)
HOST_PKGS=(qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross)

die() { echo "emulated-aarch64: $*" >&2; exit 2; }
say() { echo "emulated-aarch64: $*" >&2; }

need_host_packages() {
  local missing=()
  command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
  [ -e /usr/aarch64-linux-gnu/lib/crti.o ] || missing+=(libc6-dev-arm64-cross)
  echo "${missing[@]:-}"
}

setup_host() {
  local missing
  missing="$(need_host_packages)"
  [ -z "$missing" ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages: $missing (apt-get install $missing)"
  say "apt-get install $missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

setup_sysroot() {
  [ -x "$SYSROOT/usr/bin/python3.11" ] && [ -f "$SYSROOT/.complete" ] && return 0
  [ "$(id -u)" -eq 0 ] || die "the arm64 sysroot needs apt (run setup as root once)"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "dpkg --add-architecture arm64"
    dpkg --add-architecture arm64
    apt-get update -qq
  fi
  if ! apt-cache show python3.11:arm64 >/dev/null 2>&1; then apt-get update -qq; fi
  # python3.11:arm64 and its run-time libraries (arm64 ones only: no arch-all docs etc.)
  local pkgs
  pkgs="$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
            --no-replaces --no-enhances --no-pre-depends python3.11:arm64 libstdc++6:arm64 2>/dev/null |
          grep -E '^[a-z0-9]' | grep -E ':arm64$' | sort -u |
          grep -vE '^(debconf|dpkg|perl|coreutils|tar|install-info|base-files|debianutils|readline-common|mime-support|media-types|tzdata|libc-bin|python3.11-doc)')"
  pkgs="$pkgs media-types"
  local debs="$ROOT/debs"
  rm -rf "$debs" "$SYSROOT"
  mkdir -p "$debs" "$SYSROOT"
  say "apt-get download $(echo "$pkgs" | wc -w) arm64 packages"
  # shellcheck disable=SC2086
  (cd "$debs" && apt-get download -qq $pkgs >/dev/null)
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
  rm -rf "$debs"
  [ -x "$SYSROOT/usr/bin/python3.11" ] || die "python3.11 missing from the sysroot"
  touch "$SYSROOT/.complete"
}

setup_wheels() {
  [ -f "$SITE/.complete" ] && return 0
  rm -rf "$SITE" "$WHEELS"
  mkdir -p "$SITE" "$WHEELS"
  say "pip download ${TVM_PINS[*]} (manylinux_2_28_aarch64, cp311)"
  "$HOST_PY" -m pip download -q --disable-pip-version-check --dest "$WHEELS" --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --python-version 3.11 --implementation cp --abi cp311 \
    "${TVM_PINS[@]}"
  "$HOST_PY" -m pip install -q --disable-pip-version-check --no-deps --no-index --target "$SITE" \
    --platform manylinux_2_28_aarch64 --python-version 3.11 --implementation cp --abi cp311 \
    --only-binary=:all: "$WHEELS"/*.whl
  rm -rf "$WHEELS"
  touch "$SITE/.complete"
}

write_wrapper() {
  # TVM's RPC server starts its workers with sys.executable: that must be runnable on the
  # host, so it is this wrapper (no binfmt_misc in containers), set by sitecustomize.
  mkdir -p "$ROOT/bin"
  cat >"$ROOT/bin/python3" <<EOF
#!/bin/sh
export PYTHONPATH="$SITE"
export PYTHONNOUSERSITE=1
export PYTHONDONTWRITEBYTECODE=1
exec qemu-aarch64 -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" "\$@"
EOF
  chmod +x "$ROOT/bin/python3"
  cat >"$SITE/sitecustomize.py" <<EOF
import sys
sys.executable = "$ROOT/bin/python3"
EOF
}

setup() {
  mkdir -p "$ROOT"
  setup_host
  setup_sysroot
  setup_wheels
  write_wrapper
}

pidfile() { echo "$ROOT/rpc-$1.pid"; }

running_pid() {
  local f pid
  f="$(pidfile "$1")"
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

ready() {  # a real RPC session (not a raw socket probe: a dropped handshake kills the server)
  timeout 60 "$HOST_PY" - "$@" <<'EOF' >/dev/null 2>&1
import sys
from tvm import rpc
if len(sys.argv) > 2:   # registered at a tracker: get it from there
    host, port = sys.argv[2].rsplit(":", 1)
    sess = rpc.connect_tracker(host, int(port)).request(sys.argv[3], session_timeout=60)
else:
    sess = rpc.connect("127.0.0.1", int(sys.argv[1]), session_timeout=60)
assert sess.cpu(0).exist
EOF
}

start() {
  local port="$1" tracker="${2:-}" key="${3:-}" pid
  if pid="$(running_pid "$port")"; then
    say "already running on 127.0.0.1:$port (pid $pid)"
    return 0
  fi
  [ -z "$tracker" ] || [ -n "$key" ] || die "start PORT TRACKER_HOST:PORT KEY: the key is missing"
  setup
  local log="$ROOT/rpc-$port.log" extra=()
  [ -z "$tracker" ] || extra=(--tracker "$tracker" --key "$key")
  # --port-end: exactly this port (TVM otherwise walks up to the next free one)
  setsid "$ROOT/bin/python3" -m tvm.exec.rpc_server --host 127.0.0.1 --port "$port" \
    --port-end "$((port + 1))" "${extra[@]}" >"$log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$port")"
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt 240 ]; do
    if ! running_pid "$port" >/dev/null; then
      tail -5 "$log" >&2 || true
      die "the RPC server exited (log $log)"
    fi
    if grep -q "bind to" "$log" 2>/dev/null && ready "$port" $tracker $key; then
      say "running on 127.0.0.1:$port (pid $(cat "$(pidfile "$port")"), up in $((SECONDS - t0)) s)"
      return 0
    fi
    sleep 1
  done
  stop "$port"
  die "the RPC server did not answer within 240 s (log $log)"
}

stop() {
  local port="$1" pid
  if pid="$(running_pid "$port")"; then
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 -- "-$pid" 2>/dev/null || true
    say "stopped (pid $pid)"
  else
    say "not running on port $port"
  fi
  rm -f "$(pidfile "$port")"
}

tracker() {
  local port="$1" pid
  if pid="$(running_pid "$port")"; then
    say "already running on 127.0.0.1:$port (pid $pid)"
    return 0
  fi
  "$HOST_PY" -c "import tornado" 2>/dev/null || die "the tracker needs tornado: pip install tornado"
  local log="$ROOT/rpc-$port.log"
  mkdir -p "$ROOT"
  setsid "$HOST_PY" -m tvm.exec.rpc_tracker --host 127.0.0.1 --port "$port" --port-end "$((port + 1))" \
    >"$log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$port")"
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt 60 ]; do
    running_pid "$port" >/dev/null || die "the tracker exited (log $log)"
    if timeout 20 "$HOST_PY" -c "from tvm import rpc; rpc.connect_tracker('127.0.0.1', $port).summary()" \
         >/dev/null 2>&1; then
      say "tracker running on 127.0.0.1:$port (pid $(cat "$(pidfile "$port")"))"
      return 0
    fi
    sleep 1
  done
  stop "$port"
  die "the tracker did not answer within 60 s (log $log)"
}

status() {
  local port="$1" pid
  if pid="$(running_pid "$port")"; then
    echo "running on 127.0.0.1:$port (pid $pid)"
  else
    echo "stopped"
    return 1
  fi
}

cmd="${1:-status}"
shift || true
case "$cmd" in
  setup) setup ;;
  start) start "${1:-9090}" "${2:-}" "${3:-}" ;;
  tracker) tracker "${1:-9190}" ;;
  stop) stop "${1:-9090}" ;;
  status) status "${1:-9090}" ;;
  python) setup >/dev/null; exec "$ROOT/bin/python3" "$@" ;;
  root) echo "$ROOT" ;;
  *) die "usage: $0 setup|start [PORT [TRACKER KEY]]|tracker [PORT]|stop [PORT]|status [PORT]|python ARGS...|root" ;;
esac
