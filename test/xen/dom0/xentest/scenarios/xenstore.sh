# xenstore: the xenstored dom0 runs (xenstored=xenmesh|c on the boot line) serves the real host.
# - Xen's own test-xenstore passes against it in dom0.
# - Four guests at once: one uses xenstore from its userspace through its own ring (/dev/xen/xenbus: the
#   xenstore job of guest/init), its node and watch meeting dom0's; the others misbehave on their rings
#   (xsabuse.ko: req_prod past what the ring holds; a header longer than XENSTORE_PAYLOAD_MAX; the ring left
#   unread while dom0 fills it with watch events) and lose their connections while the first and dom0 carry
#   on. Then the first is paused (a ring nobody drains) while dom0 fires watch events at it; unpaused, it
#   still answers (xl shutdown works: its queue was bounded, its connection kept, as xl pause is no fault).
#   Xen's C xenstored keeps a running guest that does not read (it bounds its queue): the stalled guest is
#   left out when dom0 runs it.
# - xl shutdown and xl destroy release the domains, each firing @releaseDomain.
#
# xsbench (not in all): the same fixed batch of xenstore-utils calls and a test-xenstore run, timed, against
# whichever xenstored dom0 runs; `npm run bench:xen-xenstore` boots with each in turn and reports the ratio.
XS_GUEST=xsguest               # the xenstore job; then paused, flooded with watch events, unpaused, xl shutdown
XS_ABUSE_GUESTS="xsindexes:indexes xslength:length"   # name:mode of the guests running xsabuse.ko
[ "$XENSTORED" = xenmesh ] && XS_ABUSE_GUESTS+=" xsstall:stall"
XS_GUEST_MB=32                 # xsguest's disk: only its presence on the guest's xenbus matters (the
                               # others have none: xl create waits for a disk's hotplug)
XS_GUEST_MEMORY_MB=128         # four at once
XS_FLOOD_EVENTS=300            # watch events fired at the paused guest and the stalled one (their frontend
                               # buses watch "device"): 12 KiB and more, where the ring holds 1 KiB
XS_PAUSE_SECONDS=15            # the paused guest stays paused longer than dom0/init's XS_UNREAD_OUTPUT_SECONDS (10)
XS_DOM0_CALLS=10               # dom0's timed batch, before and while guests misbehave (DATA only)
TEST_XENSTORE=/usr/lib/xen-4.17/bin/test-xenstore
TEST_XENSTORE_SECONDS=600      # every test once, under TCG
XS_JOB_SECONDS=180             # the guest's xenstore job, once it has booted
RELEASE_SECONDS=30             # the domain is gone -> @releaseDomain has fired

# run_test_xenstore PREFIX: test-xenstore's every test once, timed (DATA PREFIX.test-xenstore-ms); fails
# the scenario, with its output, if a test fails
run_test_xenstore() {
  local t0=$EPOCHREALTIME rc=0
  timeout $TEST_XENSTORE_SECONDS $TEST_XENSTORE > $XT_RUN/test-xenstore.log 2>&1 || rc=$?
  data "$1.test-xenstore-ms" "$(ms_since "$t0")"
  if [ $rc != 0 ]; then
    show $XT_RUN/test-xenstore.log 20 test-xenstore
    fail "test-xenstore exited with $rc"
  fi
  info "test-xenstore: $(grep -c . $XT_RUN/test-xenstore.log) lines, every test passed"
  touch $XT_RUN/test-xenstore.passed
}

# ms_since T0: milliseconds since T0 (an $EPOCHREALTIME)
ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

# release_events: how many @releaseDomain events the watch has printed so far
release_events() { grep -c '^@releaseDomain' $XT_RUN/release.watch; }

# wait_release_event N: until more than N events were seen
wait_release_event() {
  local deadline=$((SECONDS + RELEASE_SECONDS))
  until [ "$(release_events)" -gt "$1" ]; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep $POLL_SECONDS
  done
}

# dom0_batch LABEL: XS_DOM0_CALLS writes and reads from dom0, timed (DATA xenstore.dom0-batch-LABEL-ms)
dom0_batch() {
  local i t0=$EPOCHREALTIME
  for i in $(seq $XS_DOM0_CALLS); do
    xenstore-write /local/domain/0/xsbatch/k$i $i && xenstore-read /local/domain/0/xsbatch/k$i > /dev/null ||
      fail "dom0's xenstore call $i failed ($1)"
  done
  xenstore-rm /local/domain/0/xsbatch
  data "xenstore.dom0-batch-$1-ms" "$(ms_since "$t0")"
}

# flood_events DOMID: XS_FLOOD_EVENTS writes under the domain's "device" directory, each a watch event for it.
# One process (process starts cost a quarter of a second under TCG) and one transaction (xenstore-write's),
# which fires one event per node it changed: each write names a node of its own.
flood_events() {
  xenstore-write $(for i in $(seq $XS_FLOOD_EVENTS); do echo "/local/domain/$1/device/xsflood$i $i"; done)
}

# flood_stalled_guest NAME OFFSET DOMID: once the guest has stopped reading its ring, fills it with watch events
flood_stalled_guest() {
  local line
  line=$(wait_console $1 "$2" 'DOMU: xsabuse stalled|DOMU: xsabuse result=' $((GUEST_DISK_SECONDS + GUEST_JOB_SECONDS))) ||
    fail "guest $1 did not stall its ring"
  case $line in *result=*) return ;; esac   # it failed before: wait_guest_result says how
  flood_events $3 || fail "dom0's writes to the stalled guest's directory failed"
  info "$XS_FLOOD_EVENTS watch events fired at domain $3, which reads nothing of its ring"
}

scenario_xenstore() {
  local offset domid value events watcher g name mode
  declare -A abuse_offset abuse_domid
  # once a boot is enough (xsbench, when it ran first, has timed it)
  [ -f $XT_RUN/test-xenstore.passed ] || run_test_xenstore xenstore
  dom0_batch before

  # every @releaseDomain from here on (a watch fires once when set: the first line)
  xenstore-watch @releaseDomain > $XT_RUN/release.watch 2>&1 &
  watcher=$!
  new_image $IMAGES/$XS_GUEST.img $XS_GUEST_MB
  local GUEST_MEMORY_MB=$XS_GUEST_MEMORY_MB
  offset=$(console_offset $XS_GUEST)
  create_guest $XS_GUEST xenstore $IMAGES/$XS_GUEST.img
  domid=$(domid_of $XS_GUEST) || fail "no domain $XS_GUEST"
  for g in $XS_ABUSE_GUESTS; do
    name=${g%%:*} mode=${g#*:}
    abuse_offset[$name]=$(console_offset $name)
    GUEST_EXTRA="xsabuse=$mode" GUEST_DISK=none create_guest $name xsabuse none
    abuse_domid[$name]=$(domid_of $name) || fail "no domain $name"
  done

  # the guests that misbehave: each showed its ring working, then wrote garbage and got no answer, or
  # stopped reading and was cut off once dom0 had filled its ring
  for g in $XS_ABUSE_GUESTS; do
    name=${g%%:*} mode=${g#*:}
    [ "$mode" = stall ] && flood_stalled_guest $name "${abuse_offset[$name]}" "${abuse_domid[$name]}"
    wait_guest_result $name "${abuse_offset[$name]}" xsabuse $((GUEST_DISK_SECONDS + GUEST_JOB_SECONDS))
  done
  dom0_batch while-misbehaving

  # meanwhile the honest guest writes through its ring; dom0 reads it, and answers on the node it watches
  wait_console $XS_GUEST "$offset" 'DOMU: xenstore watching|DOMU: xenstore result=' $((GUEST_DISK_SECONDS + XS_JOB_SECONDS)) >/dev/null || {
    show "$(console_log $XS_GUEST)" 20 "$XS_GUEST console"
    fail "guest $XS_GUEST did not reach its watch"
  }
  value=$(xs_read /local/domain/$domid/data/from-guest) || fail "dom0 cannot read the node the guest wrote"
  [ "$value" = "written by domain $domid" ] || fail "the guest's node holds '$value'"
  info "dom0 reads the guest's node: $value"
  xenstore-write /local/domain/$domid/data/from-dom0 "answered by dom0" || fail "dom0 cannot answer"
  wait_guest_result $XS_GUEST "$offset" xenstore $XS_JOB_SECONDS
  console_since $XS_GUEST "$offset" | grep -q 'from-dom0=answered by dom0' || fail "the guest did not read dom0's answer"

  # a ring nobody drains: the guest paused, dom0 fires watch events at it (its frontend bus watches its
  # "device" directory) and carries on; unpaused, the guest still has its connection and obeys xl shutdown
  xl_run $XL_COMMAND_SECONDS pause $XS_GUEST || fail "xl pause $XS_GUEST failed"
  local paused_at=$SECONDS
  flood_events $domid || fail "dom0's writes to the paused guest's directory failed"
  info "$XS_FLOOD_EVENTS watch events fired at paused domain $domid"
  dom0_batch while-stalled
  # paused for longer than xenstored lets a running guest leave its ring unread
  [ $((SECONDS - paused_at)) -lt $XS_PAUSE_SECONDS ] && sleep $((XS_PAUSE_SECONDS - (SECONDS - paused_at)))
  xl_run $XL_COMMAND_SECONDS unpause $XS_GUEST || fail "xl unpause $XS_GUEST failed"
  events=$(release_events)
  shutdown_guest $XS_GUEST
  wait_release_event "$events" || fail "no @releaseDomain within ${RELEASE_SECONDS}s of domain $domid's shutdown"
  info "the paused guest, unpaused, shut down when asked (its connection outlived the flood); @releaseDomain fired"

  for g in $XS_ABUSE_GUESTS; do
    name=${g%%:*}
    events=$(release_events)
    xl_run $DESTROY_SECONDS destroy $name || fail "xl destroy $name failed"
    wait_domain_gone "${abuse_domid[$name]}" $DESTROY_SECONDS || fail "domain ${abuse_domid[$name]}'s directory outlived xl destroy"
    wait_release_event "$events" || fail "no @releaseDomain within ${RELEASE_SECONDS}s of domain ${abuse_domid[$name]}'s destruction"
  done
  info "xl destroy: the misbehaving domains released, @releaseDomain fired for each"
  data xenstore.release-events "$(release_events)"
  kill $watcher 2>/dev/null
  # what xenmesh's xenstored said of them
  if [ -f "$XENSTORED_LOG" ]; then
    grep -E "(domain |d)($(IFS='|'; echo "${abuse_domid[*]}"))[^0-9]" "$XENSTORED_LOG" | tail -n 6 |
      while IFS= read -r l; do info "xenstored| $l"; done
  fi
  rm -f $IMAGES/$XS_GUEST.img
  scenario_ended
}

# --- xsbench ---
XSBENCH_ROUNDS=3               # the batch, timed this many times; the median is reported
XSBENCH_CALLS=50               # xenstore-write, -read, -ls and -rm calls in a batch, one process each
XSBENCH_PATH=/local/domain/0/xsbench

# xsbench_round N: one timed batch, as DATA xsbench.<step>.rN (milliseconds)
xsbench_round() {
  local i t0
  t0=$EPOCHREALTIME
  for i in $(seq $XSBENCH_CALLS); do xenstore-write $XSBENCH_PATH/k$i "value $i" || fail "xenstore-write failed"; done
  data "xsbench.write.r$1" "$(ms_since "$t0")"
  t0=$EPOCHREALTIME
  for i in $(seq $XSBENCH_CALLS); do xenstore-read $XSBENCH_PATH/k$i > /dev/null || fail "xenstore-read failed"; done
  data "xsbench.read.r$1" "$(ms_since "$t0")"
  t0=$EPOCHREALTIME
  for i in $(seq $XSBENCH_CALLS); do xenstore-ls $XSBENCH_PATH > /dev/null || fail "xenstore-ls failed"; done
  data "xsbench.ls.r$1" "$(ms_since "$t0")"
  t0=$EPOCHREALTIME
  for i in $(seq $XSBENCH_CALLS); do xenstore-rm $XSBENCH_PATH/k$i || fail "xenstore-rm failed"; done
  data "xsbench.rm.r$1" "$(ms_since "$t0")"
}

scenario_xsbench() {
  local r
  data xsbench.calls $XSBENCH_CALLS
  for r in $(seq $XSBENCH_ROUNDS); do xsbench_round "$r"; done
  xenstore-rm $XSBENCH_PATH
  run_test_xenstore xsbench
  scenario_ended
}
