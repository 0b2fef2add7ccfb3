#!/bin/bash
# Stop the QEMU that run-vm.sh started (by its pid file): SIGTERM, then SIGKILL if it has not gone in
# STOP_SECONDS. Nothing in the VM needs to survive (dom0 runs from tmpfs), so there is no clean shutdown.
set -euo pipefail
. "$(dirname "$0")/env.sh"
STOP_SECONDS=10
PIDFILE=$XENMESH_XEN_DIR/qemu.pid
[ -f "$PIDFILE" ] || { echo "stop-vm: no QEMU running"; exit 0; }
pid=$(cat "$PIDFILE")
# only our QEMU: the pid must still be a qemu-system process (pids are reused)
if kill -0 "$pid" 2>/dev/null && grep -q qemu-system "/proc/$pid/cmdline" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq $((STOP_SECONDS * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  echo "stop-vm: stopped QEMU (pid $pid)"
fi
rm -f "$PIDFILE"
