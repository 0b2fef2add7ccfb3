#!/bin/bash
# Run the scenarios dom0's boot line names (xentest=all, or xentest=basic,hotplug,...), one after another,
# and tell the host what happened through markers on the console, one per line:
#   XENTEST BEGIN <scenario> | INFO <text> | DATA <key>=<value> | PASS <scenario> | FAIL <scenario>: <reason>
#   XENTEST DONE   (last)
# The block backend is chosen by the boot line: backend=xenmesh (the userspace backend, started here before
# the first guest; boot with blkback=0) or backend=kernel (xen-blkback, the default when none is named).
# Each scenario runs in a subshell of its own with a time limit; a failed or wedged one is reported, its
# domains destroyed, and the next one runs. No `set -e`: the scenarios test for failure explicitly (grep and
# friends fail as a matter of course), and a stray error must not end the run before XENTEST DONE.
set -uo pipefail
XT=/opt/xentest
XT_RUN=/run/xentest            # the running scenario's reason for failing, the guests to keep, scratch
XT_LOGS=/var/log/xentest       # what the scenarios print besides markers, one log per scenario
mkdir -p $XT_RUN $XT_LOGS /var/lib/xen/images /var/lib/xen/save
exec 3>&1                      # markers: the console
exec >>$XT_LOGS/run.log 2>&1   # everything else: the log
export PATH=/usr/lib/xen-4.17/bin:/usr/local/bin:/usr/sbin:/usr/bin
# which xenstored dom0 runs (dom0/init starts it from the same boot line)
XENSTORED=c
grep -qw xenstored=c /proc/cmdline || XENSTORED=xenmesh
. $XT/lib.sh
for f in $XT/scenarios/*.sh; do . "$f"; done

ALL="xenstore driverdomain negotiated basic hotplug lifecycle saverestore"
# time limits per scenario, in seconds: each is a few guest boots plus their jobs under TCG
declare -A SCENARIO_SECONDS=([xenstore]=900 [driverdomain]=900 [xsbench]=900 [negotiated]=420 [basic]=600 [hotplug]=600 [lifecycle]=1000 [saverestore]=800 [grants]=1200)
XENSTORED_LOG=/var/log/xen/xenmesh-xenstored.log   # where scripts/xenstored-background logs
XENSTORED_LOG_LINES=40
BACKEND_READY_SECONDS=120      # node starting the backend's workers under TCG
BACKEND_LOG=/var/log/xenmesh-backend.log
BACKEND_LOG_LINES=100          # how much of its log goes to the console at the end

BACKEND=kernel
BACKEND_ARGS=
BACKEND_TRACE=
# The backend reaches xenstored through the kernel's xenbus device, as in a driver domain (in dom0 it
# would take the socket by itself); xenmesh_xenstore=<path> on the boot line names another way.
BACKEND_XENSTORE=/dev/xen/xenbus
for a in $(cat /proc/cmdline); do
  case $a in
    backend=*) BACKEND=${a#backend=} ;;
    xenmesh_log=*) export XENMESH_LOG=${a#xenmesh_log=} ;;   # the backend's log level
    xenmesh_args=*) BACKEND_ARGS=${a#xenmesh_args=}; BACKEND_ARGS=${BACKEND_ARGS//,/ } ;;  # its options
    xenmesh_strace=1) BACKEND_TRACE="strace -f -tt -o $BACKEND_LOG.strace" ;;     # its system calls
    xenmesh_xenstore=*) BACKEND_XENSTORE=${a#xenmesh_xenstore=} ;;
  esac
done
LIST=${1:-all}
[ "$LIST" = all ] && LIST=$ALL
LIST=${LIST//,/ }

# start_xenmesh_backend: node /opt/xenmesh/dist/bin/xenmesh.js backend, until it says "ready"
start_xenmesh_backend() {
  if [ -d /sys/module/xen_blkback ]; then
    info "xen-blkback is loaded: boot with blkback=0 for backend=xenmesh"; return 1
  fi
  # a process group of its own (set -m), which a scenario's timeout does not touch
  # shellcheck disable=SC2086 # BACKEND_ARGS: options, one per word
  (cd /opt/xenmesh && exec $BACKEND_TRACE node dist/bin/xenmesh.js backend --xenstore=$BACKEND_XENSTORE $BACKEND_ARGS) </dev/null >$BACKEND_LOG 2>&1 &
  BACKEND_PID=$!
  local t0=$SECONDS
  until grep -q ready $BACKEND_LOG; do
    if ! kill -0 $BACKEND_PID 2>/dev/null; then
      info "the backend exited before it was ready"; show $BACKEND_LOG 30 backend; return 1
    fi
    if [ $((SECONDS - t0)) -ge $BACKEND_READY_SECONDS ]; then
      info "the backend was not ready within ${BACKEND_READY_SECONDS}s"; show $BACKEND_LOG 30 backend; return 1
    fi
    sleep $POLL_SECONDS
  done
  data backend.ready-seconds $((SECONDS - t0))
  info "backend: $(grep -m1 ready $BACKEND_LOG)"
}

# backend_gone: true (once said why) when the backend process has exited
backend_gone() {
  kill -0 $BACKEND_PID 2>/dev/null && return 1
  if [ -z "${BACKEND_STATUS:-}" ]; then
    wait $BACKEND_PID; BACKEND_STATUS=$?
    info "the backend exited with status $BACKEND_STATUS$([ $BACKEND_STATUS -gt 128 ] && echo " (signal $((BACKEND_STATUS - 128)))")"
    # a crash or the OOM killer leaves a line in the kernel log, below the console's loglevel
    dmesg | grep -iE 'segfault|general protection|oom|killed process|node\[' | tail -n 10 |
      while IFS= read -r l; do info "dmesg| $l"; done
  fi
  return 0
}

stop_xenmesh_backend() {
  [ -n "${BACKEND_PID:-}" ] || return 0
  if ! backend_gone; then
    kill -TERM $BACKEND_PID
    local i=0
    while kill -0 $BACKEND_PID 2>/dev/null && [ $i -lt 20 ]; do sleep 0.5; i=$((i + 1)); done
    backend_gone || info "the backend did not stop on SIGTERM within 10s"
  fi
  show $BACKEND_LOG $BACKEND_LOG_LINES backend
  if [ -n "$BACKEND_TRACE" ]; then
    # the Xen device files it opened, and what led up to the first fatal signal, if any
    grep -E 'open.*/dev/xen|--- SIG' $BACKEND_LOG.strace | head -n 20 > $XT_RUN/strace.opens
    show $XT_RUN/strace.opens 20 strace
    grep -B 60 -m 1 -E -- '--- SIG(SEGV|BUS|ILL|ABRT)' $BACKEND_LOG.strace > $XT_RUN/strace.fatal &&
      show $XT_RUN/strace.fatal 61 strace
  fi
}

# run_scenario NAME: BEGIN, the scenario in its own process group with its time limit, PASS or FAIL
run_scenario() {
  local name=$1 limit=${SCENARIO_SECONDS[$1]:-600} t0=$SECONDS pid rc reason
  marker "BEGIN $name"
  if ! declare -F "scenario_$name" >/dev/null; then marker "FAIL $name: no such scenario"; return; fi
  : > $XT_RUN/reason
  rm -f $XT_RUN/ended
  XT_LOG=$XT_LOGS/$name.log
  ( exec >>"$XT_LOG" 2>&1; "scenario_$name" ) &
  pid=$!
  while kill -0 $pid 2>/dev/null; do
    if [ $((SECONDS - t0)) -ge "$limit" ]; then
      echo "timed out after ${limit}s" > $XT_RUN/reason
      kill -TERM -- -$pid 2>/dev/null; sleep 2; kill -KILL -- -$pid 2>/dev/null
      show "$XT_LOG" 15 "$name log"
      break
    fi
    sleep 1
  done
  wait $pid; rc=$?
  reason=$(cat $XT_RUN/reason)
  [ $rc = 0 ] || [ -n "$reason" ] || reason="exited with status $rc (see $XT_LOG)"
  [ -n "$reason" ] || [ -f $XT_RUN/ended ] || reason="returned before its last step (scenario_ended)"
  [ -z "$reason" ] || : > $XT_RUN/keep   # a failed scenario hands nothing on
  destroy_all
  show_guest_conclusions
  data "$name.seconds" $((SECONDS - t0))
  data "$name.dom0-free-mib" "$(free -m | awk '/^Mem/ {print $4}')"
  if [ -z "$reason" ]; then marker "PASS $name"; else marker "FAIL $name: $reason"; fi
}

set -m   # each scenario in a process group of its own, so that a timeout can end all of it
: > $XT_RUN/keep
: > $XT_RUN/guests
info "scenarios: $LIST; backend $BACKEND; kernel $(uname -r); xen $(xl info 2>/dev/null | sed -n 's/^xen_version *: //p')"
data kernel "$(uname -r)"
info "dom0: $(df -m /var/lib/xen | awk 'NR > 1 {printf "%s MiB of %s free for images; ", $4, $2}')$(free -m | awk '/^Mem/ {print $4 " MiB of " $2 " memory free"}')"
data backend "$BACKEND"
backend_ok=1
if [ "$BACKEND" = xenmesh ]; then
  start_xenmesh_backend || backend_ok=0
elif [ "$BACKEND" != kernel ]; then
  info "unknown backend=$BACKEND"; backend_ok=0
fi
for s in $LIST; do
  [ "$BACKEND" = xenmesh ] && [ $backend_ok = 1 ] && backend_gone && backend_ok=0
  if [ $backend_ok = 1 ]; then
    run_scenario "$s"
  else
    marker "BEGIN $s"; marker "FAIL $s: the $BACKEND backend is not serving"
  fi
done
[ "$BACKEND" = xenmesh ] && stop_xenmesh_backend
# which xenstored served the run, and whether it is still serving
data xenstored $XENSTORED
if [ -f /run/xen/xenstored.pid ] && kill -0 "$(cat /run/xen/xenstored.pid)" 2>/dev/null; then
  info "xenstored ($XENSTORED) is still running"
else
  info "xenstored ($XENSTORED) is gone"; data xenstored.gone 1
fi
[ $XENSTORED = xenmesh ] && show $XENSTORED_LOG $XENSTORED_LOG_LINES xenstored
marker DONE
