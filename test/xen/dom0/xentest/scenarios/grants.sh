# grants: grant mapping against grant copy (and auto, copy for small requests and map for large ones), the
# ways `xenmesh backend --grant-access` reaches a guest's pages. Not part of "all"; run it alone (XENMESH_XEN_SCENARIOS=grants), since it runs backends
# of its own:
# 1. npm run bench:xen-grants in dom0 (bench/xen-grants-bench.ts): map+unmap against copy of 1 to 256
#    pages of dom0's own, shared with itself; its lines become DATA grants.<n>.
# 2. End to end: a backend in each mode, in interleaved rounds with the order rotated, serving a guest
#    that times the pattern written and read back at queue depth 1 (job throughput); each round becomes
#    DATA grants.e2e.<round>.<mode>.<pages>p=<write-seconds>/<read-seconds>, and the medians with their
#    range DATA grants.e2e.median.<mode>.<pages>p.
GRANT_ROUNDS="map copy auto copy auto map auto map copy"   # each mode thrice, the order rotated
GRANT_JOB_SECONDS=600    # the guest's throughput job, once it has its disk
BACKEND_STOP_SECONDS=20  # SIGTERM -> the backend has answered, flushed, closed and exited

# wait_gone PID SECONDS
wait_gone() {
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep $POLL_SECONDS
  done
}

scenario_grants() {
  local n=0 line
  (cd /opt/xenmesh && node dist/bench/xen-grants-bench.js) > "$XT_RUN/grants.out" 2>&1 || {
    show "$XT_RUN/grants.out" 20 bench
    fail "bench:xen-grants failed"
  }
  while IFS= read -r line; do
    n=$((n + 1))
    data "grants.$n" "$line"
  done < "$XT_RUN/grants.out"

  [ "$BACKEND" = xenmesh ] || { info "grants: the end-to-end rounds need backend=xenmesh"; return 0; }
  kill -TERM "$BACKEND_PID" 2>/dev/null
  wait_gone "$BACKEND_PID" $BACKEND_STOP_SECONDS || fail "the shared backend did not stop"
  local round=0 mode pid image=$IMAGES/grants.img offset results=$XT_RUN/grants.e2e log=$XT_RUN/grants-backend.log
  : > "$results"
  for mode in $GRANT_ROUNDS; do
    round=$((round + 1))
    (cd /opt/xenmesh && exec node dist/bin/xenmesh.js backend --grant-access=$mode) </dev/null >"$log" 2>&1 &
    pid=$!
    local deadline=$((SECONDS + BACKEND_READY_SECONDS))
    until grep -q ready "$log"; do
      kill -0 $pid 2>/dev/null && [ $SECONDS -lt $deadline ] || { show "$log" 20 backend; fail "the $mode backend did not start"; }
      sleep $POLL_SECONDS
    done
    new_image "$image" $IMAGE_MB
    offset=$(console_offset grants)
    create_guest grants throughput "$image"
    wait_guest_disk grants "$offset"
    wait_guest_result grants "$offset" throughput $GRANT_JOB_SECONDS
    console_since grants "$offset" | grep 'DOMU: throughput pages=' | while IFS= read -r line; do
      local pages write read
      pages=$(field "$line" pages); write=$(field "$line" write-seconds); read=$(field "$line" read-seconds)
      data "grants.e2e.$round.$mode.${pages}p" "$write/$read"
      echo "$mode $pages $write $read" >> "$results"
    done
    xl_run $DESTROY_SECONDS destroy grants || fail "xl destroy grants failed"
    kill -TERM $pid
    wait_gone $pid $BACKEND_STOP_SECONDS || fail "the $mode backend did not stop on SIGTERM"
  done
  # medians (and ranges) of each mode and request size, write and read seconds
  local pages
  for mode in map copy auto; do
    for pages in $(awk '{print $2}' "$results" | sort -un); do
      data "grants.e2e.median.$mode.${pages}p" \
        "write $(median_of "$results" "$mode" "$pages" 3) read $(median_of "$results" "$mode" "$pages" 4)"
    done
  done
  scenario_ended
}

# median_of FILE MODE PAGES COLUMN: "median (min-max)" of a column of the rounds of one mode and size
median_of() {
  awk -v m="$2" -v p="$3" -v c="$4" '$1 == m && $2 == p {print $c}' "$1" | sort -n |
    awk '{v[NR] = $1} END {printf "%.2fs (%.2f-%.2f)", v[int((NR + 1) / 2)], v[1], v[NR]}'
}
