# Helpers for the scenarios, sourced by run.sh (bash). Markers go to fd 3, the console; everything else a
# scenario prints goes to its log under $XT_LOGS. Every wait has a limit: a wedged step fails the scenario
# with a reason instead of hanging the run.

# --- layout of the guests' disks (the guests get it on their command line) ---
GUEST_MEMORY_MB=160             # small: the save file of saverestore is this big
IMAGE_MB=128                    # xvda, a sparse file in dom0's tmpfs
FS_MB=64                        # ext4 on xvda's first 64 MiB ...
PATTERN_FIRST=$((FS_MB * 256))  # ... the pattern in the 4 KiB blocks right after it
PATTERN_COUNT=2048              # 8 MiB: a load pass takes seconds under TCG, and every guest writes it
SECOND_DISK_MB=32               # hotplug's xvdb
VBD_XVDA=51712                  # the virtual device numbers of xvda, xvdb (xen-vbd-interface(7))
VBD_XVDB=51728

# --- time limits, in seconds (TCG on a shared host: generous, but never unbounded) ---
XL_CREATE_SECONDS=180           # xl create returns
GUEST_DISK_SECONDS=150          # xl create -> the guest has booted and sees xvda (9-40 s seen; blkfront alone
                                # would wait 300 s for a backend that never connects)
GUEST_JOB_SECONDS=300           # the basic job's verdict, once the guest has its disk
LOAD_PROGRESS_SECONDS=120       # the load job acknowledges pattern writes
SHUTDOWN_SECONDS=300            # xl shutdown -> the domain is gone (the guest's final checks run first)
DESTROY_SECONDS=120             # xl destroy -> the domain is gone
XENSTORE_CLEANUP_SECONDS=30     # the domain is gone -> libxl removed the device's xenstore dirs
BLOCK_DEVICE_SECONDS=120        # xl block-attach / block-detach return
SAVE_SECONDS=300                # xl save / xl restore return
XL_COMMAND_SECONDS=60           # any other xl command
POLL_SECONDS=0.5

IMAGES=/var/lib/xen/images
CONSOLE_LOGS=/var/log/xen/console

# --- markers ---
marker() { echo "XENTEST $*" >&3; }
info() { marker "INFO $*"; }
data() { marker "DATA $1=$2"; }
# fail REASON: end the running scenario (it runs in a subshell of its own); run.sh prints the FAIL marker
fail() {
  echo "$*" > "$XT_RUN/reason"
  echo "FAIL: $*"
  exit 1
}
# scenario_ended: the last line of every scenario. A scenario that returns without reaching it (a quote left
# open, an early return) fails rather than passing on what it never checked.
scenario_ended() { touch "$XT_RUN/ended"; }

# show FILE [N] [LABEL]: the last N lines of a log as INFO lines, to explain a failure on the console
show() {
  [ -f "$1" ] || return 0
  tail -n "${2:-20}" "$1" | tr -d '\r' | while IFS= read -r l; do info "${3:-${1##*/}}| $l"; done
}

elapsed_since() { echo $((SECONDS - $1)); }

# --- xenstore ---
xs_read() { xenstore-read "$1" 2>/dev/null; }
xs_exists() { xenstore-exists "$1" 2>/dev/null; }
backend_dir() { echo "/local/domain/0/backend/vbd/$1/$2"; }   # DOMID DEVID
frontend_dir() { echo "/local/domain/$1/device/vbd/$2"; }     # DOMID DEVID

# wait_xs PATH VALUE SECONDS: until the node holds VALUE
wait_xs() {
  local deadline=$((SECONDS + $3))
  until [ "$(xs_read "$1")" = "$2" ]; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep $POLL_SECONDS
  done
}

# wait_xs_gone PATH SECONDS: until the node is removed
wait_xs_gone() {
  local deadline=$((SECONDS + $2))
  while xs_exists "$1"; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep $POLL_SECONDS
  done
}

# xs_dump DIR PREFIX: every node under DIR as "DATA PREFIX<relative path>=<value>"
xs_dump() {
  xenstore-ls -f "$1" 2>/dev/null | sed -n "s|^$1/\([^ ]*\) = \"\(.*\)\"\$|\1 \2|p" | while read -r k v; do
    data "$2$k" "$v"
  done
}

# --- guests ---
console_log() { echo "$CONSOLE_LOGS/guest-$1.log"; }
# console_offset NAME: how much of the guest's console log exists now (xenconsoled appends to one log per
# name, across reboots, save/restore and re-creation: waits look only past an offset)
console_offset() { stat -c %s "$(console_log "$1")" 2>/dev/null || echo 0; }

# console_since NAME OFFSET: the console log past OFFSET, without the tty's carriage returns
console_since() { tail -c +$(($2 + 1)) "$(console_log "$1")" 2>/dev/null | tr -d '\r'; }

# wait_console NAME OFFSET REGEX SECONDS: print the first line past OFFSET matching REGEX; 1 on timeout
wait_console() {
  local deadline=$((SECONDS + $4)) line
  while :; do
    line=$(console_since "$1" "$2" | grep -m1 -E "$3") && { echo "$line"; return 0; }
    [ $SECONDS -ge $deadline ] && return 1
    sleep $POLL_SECONDS
  done
}

# field LINE KEY: the value of KEY=value in a line
field() { echo "$1" | sed -n "s/.*[ :]$2=\([^ ]*\).*/\1/p"; }

domid_of() { xl domid "$1" 2>/dev/null; }

# disk_spec VDEV IMAGE: the xl disk line for the chosen backend
disk_spec() {
  case $BACKEND in
    # block-loop attaches the image to a loop device for xen-blkback (Debian's block script does the same,
    # too slowly under TCG for libxl's 40 s limit on hotplug scripts)
    kernel) echo "format=raw, vdev=$1, access=rw, script=/etc/xen/scripts/block-loop, target=$2" ;;
    # the userspace backend opens params (the image path) itself; the hotplug script does nothing
    xenmesh) echo "format=raw, vdev=$1, access=rw, backendtype=phy, script=/etc/xen/scripts/block-xenmesh, target=$2" ;;
  esac
}

# xl_run SECONDS ARGS...: xl ARGS with a time limit; its output goes to the log, and to the console as
# INFO lines when it fails or times out
xl_run() {
  local seconds=$1 rc=0; shift
  timeout "$seconds" xl "$@" > "$XT_RUN/xl.out" 2>&1 || rc=$?
  cat "$XT_RUN/xl.out"
  [ $rc = 0 ] && return 0
  case $rc in 124|143) info "xl $*: no answer within ${seconds}s" ;; esac   # (busybox timeout: 143)
  show "$XT_RUN/xl.out" 15 xl
  return $rc
}

# new_image PATH MIB: a fresh sparse image
new_image() {
  rm -f "$1"
  truncate -s "$2M" "$1"
}

# guest_cfg NAME JOB IMAGE: write /etc/xen/NAME.cfg, a guest that runs JOB (guest/init) on IMAGE as xvda.
# GUEST_VCPUS (default 1) and GUEST_BLKFRONT (xen-blkfront's module parameters, colon-separated, e.g.
# max_ring_page_order=2:max_queues=4) shape what the guest's blkfront negotiates; GUEST_MEMORY_MB its size;
# GUEST_EXTRA is added to its command line (xsabuse=length); GUEST_DISK replaces its disk line (none: no disk).
guest_cfg() {
  local name=$1 job=$2 image=$3 disk
  disk="\"${GUEST_DISK:-$(disk_spec xvda "$image")}\""
  [ "${GUEST_DISK:-}" = none ] && disk=
  cat > /etc/xen/$name.cfg <<EOF
name = "$name"
type = "pv"
kernel = "/root/domU/vmlinux"
ramdisk = "/root/domU/initrd"
extra = "console=hvc0 loglevel=4 xtest=$job xfs=$FS_MB xpat=$PATTERN_FIRST,$PATTERN_COUNT${GUEST_BLKFRONT:+ xblk=$GUEST_BLKFRONT}${GUEST_EXTRA:+ $GUEST_EXTRA}"
memory = $GUEST_MEMORY_MB
vcpus = ${GUEST_VCPUS:-1}
disk = [ $disk ]
on_poweroff = "destroy"
on_reboot = "restart"
on_crash = "preserve"
EOF
}

# create_guest NAME JOB IMAGE: guest_cfg, and xl create it
create_guest() {
  local name=$1 job=$2 image=$3 t0=$SECONDS
  # where this scenario's part of the guest's console starts, for show_guest_conclusions
  grep -q "^$name " "$XT_RUN/guests" 2>/dev/null || echo "$name $(console_offset "$name")" >> "$XT_RUN/guests"
  guest_cfg "$name" "$job" "$image"
  info "xl create $name (job $job, disk ${GUEST_DISK:-$(disk_spec xvda "$image")})"
  xl_run $XL_CREATE_SECONDS -v create /etc/xen/$name.cfg || fail "xl create $name failed"
  data "$name.create-seconds" "$(elapsed_since $t0)"
}

# report_negotiation DOMID DEVID PREFIX: what the guest's blkfront and the backend agreed on for a disk,
# read from both xenstore directories once both are Connected: the directories themselves as DATA
# (PREFIXfrontend.<key>, PREFIXbackend.<key>) and a summary (PREFIXsummary.queues, .ring-pages,
# .persistent-grants, .max-indirect-segments, .discard, .flush-cache, .barrier, .sectors). Fails if a queue
# lacks its ring or event channel. Sets QUEUES and RING_PAGES for the caller.
NEGOTIATED_SECONDS=60   # the guest has the disk: both ends should be Connected (4) by then
report_negotiation() {
  local fe be q dir order
  fe=$(frontend_dir "$1" "$2"); be=$(backend_dir "$1" "$2")
  wait_xs "$fe/state" 4 $NEGOTIATED_SECONDS || fail "frontend state $(xs_read "$fe/state"), not Connected (4)"
  wait_xs "$be/state" 4 $NEGOTIATED_SECONDS || fail "backend state $(xs_read "$be/state"), not Connected (4)"
  xs_dump "$fe" "${3}frontend."
  xs_dump "$be" "${3}backend."
  # one ring: ring-ref[N] and event-channel in the frontend dir; several: queue-N/ring-ref[N], event-channel
  QUEUES=$(xs_read "$fe/multi-queue-num-queues" || echo 1)
  order=$(xs_read "$fe/ring-page-order" || echo 0)
  RING_PAGES=$((1 << order))
  for q in $(seq 0 $((QUEUES - 1))); do
    dir=$fe
    [ "$QUEUES" -gt 1 ] && dir=$fe/queue-$q
    xs_exists "$dir/event-channel" || fail "no event-channel in $dir"
    xs_exists "$dir/ring-ref" || xs_exists "$dir/ring-ref0" || fail "no ring-ref in $dir"
  done
  data "${3}summary.queues" "$QUEUES"
  data "${3}summary.ring-pages" "$RING_PAGES"
  data "${3}summary.persistent-grants" "$(xs_read "$fe/feature-persistent" || echo -)/$(xs_read "$be/feature-persistent" || echo -)"
  data "${3}summary.max-indirect-segments" "$(xs_read "$be/feature-max-indirect-segments" || echo none)"
  data "${3}summary.discard" "$(xs_read "$be/feature-discard" || echo 0)"
  data "${3}summary.flush-cache" "$(xs_read "$be/feature-flush-cache" || echo 0)"
  data "${3}summary.barrier" "$(xs_read "$be/feature-barrier" || echo 0)"
  data "${3}summary.sectors" "$(xs_read "$be/sectors")x$(xs_read "$be/sector-size")"
}

# show_vbd DOMID DEVID: both ends' xenstore dirs of a virtual disk, as INFO lines (when something is stuck),
# and whether the userspace backend is still running, with the end of its log
show_vbd() {
  local dir
  if [ "$BACKEND" = xenmesh ]; then
    kill -0 "$BACKEND_PID" 2>/dev/null && info "the backend is running" || info "the backend has exited"
    show "$BACKEND_LOG" 8 backend
  fi
  for dir in "$(backend_dir "$1" "$2")" "$(frontend_dir "$1" "$2")"; do
    xenstore-ls -f "$dir" 2>&1 | head -n 40 | while IFS= read -r l; do info "xenstore| $l"; done
  done
}

# wait_guest_disk NAME OFFSET: the guest (booted after OFFSET in its console log) has its xvda
wait_guest_disk() {
  local name=$1 line domid t0=$SECONDS
  domid=$(domid_of "$name") || fail "no domain $name"
  until line=$(console_since "$name" "$2" | grep -m1 -E 'DOMU: disk /dev/xvda|DOMU: .*result=FAIL'); do
    if [ $((SECONDS - t0)) -ge $GUEST_DISK_SECONDS ] || ! xs_exists "/local/domain/$domid"; then
      show "$(console_log "$name")" 15 "$name console"
      show_vbd "$domid" $VBD_XVDA
      xs_exists "/local/domain/$domid" || fail "guest $name (domain $domid) went away before it saw xvda"
      fail "guest $name did not see xvda within ${GUEST_DISK_SECONDS}s"
    fi
    sleep $POLL_SECONDS
  done
  case $line in *result=FAIL*) show "$(console_log "$name")" 15 "$name console"; fail "guest $name: $line" ;; esac
  data "$name.disk-seconds" "$(elapsed_since $t0)"
}

# wait_guest_result NAME OFFSET JOB SECONDS: the job's verdict line ("DOMU: <job> result=ok"); fails otherwise
wait_guest_result() {
  local line
  line=$(wait_console "$1" "$2" "DOMU: $3 result=" "$4") || {
    show "$(console_log "$1")" 20 "$1 console"
    fail "guest $1: no verdict from its $3 job within $4s"
  }
  case $line in
    *result=ok*) info "guest $1: ${line#*DOMU: }" ;;
    *) show "$(console_log "$1")" 25 "$1 console"; fail "guest $1: ${line#*DOMU: }" ;;
  esac
}

# wait_load_progress NAME OFFSET: the load job acknowledges pattern writes (two records past OFFSET)
wait_load_progress() {
  local deadline=$((SECONDS + LOAD_PROGRESS_SECONDS))
  until [ "$(console_since "$1" "$2" | grep -c 'DOMU: pattern acked')" -ge 2 ]; do
    if [ $SECONDS -ge $deadline ] || console_since "$1" "$2" | grep -q 'result=FAIL\|FAILED'; then
      show "$(console_log "$1")" 15 "$1 console"
      fail "guest $1: no pattern writes acknowledged within ${LOAD_PROGRESS_SECONDS}s"
    fi
    sleep $POLL_SECONDS
  done
  info "guest $1: $(console_since "$1" "$2" | grep 'DOMU: pattern acked' | tail -n1 | sed 's/.*DOMU: //')"
}

# wait_domain_gone DOMID SECONDS: /local/domain/DOMID is removed once libxl has destroyed the domain
wait_domain_gone() { wait_xs_gone "/local/domain/$1" "$2"; }

# shutdown_guest NAME: xl shutdown, and follow both ends of xvda until the domain and the device are gone.
# The states each end went through become DATA (<name>.shutdown.backend-states=4,5,6,gone).
shutdown_guest() {
  local name=$1 domid be fe t0=$SECONDS bes="" fes="" b f
  domid=$(domid_of "$name") || fail "no domain $name to shut down"
  be=$(backend_dir "$domid" $VBD_XVDA); fe=$(frontend_dir "$domid" $VBD_XVDA)
  xl_run $XL_COMMAND_SECONDS shutdown "$name" || fail "xl shutdown $name failed"
  local deadline=$((SECONDS + SHUTDOWN_SECONDS))
  while xs_exists "/local/domain/$domid" || xs_exists "$be"; do
    b=$(xs_read "$be/state" || echo gone); f=$(xs_read "$fe/state" || echo gone)
    [ "${bes##*,}" = "$b" ] || bes="$bes,$b"
    [ "${fes##*,}" = "$f" ] || fes="$fes,$f"
    if [ $SECONDS -ge $deadline ]; then
      show "$(console_log "$name")" 15 "$name console"
      fail "$name did not shut down within ${SHUTDOWN_SECONDS}s (backend states ${bes#,}, frontend ${fes#,})"
    fi
    sleep 0.2
  done
  [ "${bes##*,}" = gone ] || bes="$bes,gone"
  [ "${fes##*,}" = gone ] || fes="$fes,gone"
  data "$name.shutdown.backend-states" "${bes#,}"
  data "$name.shutdown.frontend-states" "${fes#,}"
  data "$name.shutdown-seconds" "$(elapsed_since $t0)"
}

# check_image_closed IMAGE...: once the guests using them are gone, nothing in dom0 holds the images: the
# userspace backend has no descriptor open on them, the kernel backend no loop device
check_image_closed() {
  local image
  for image in "$@"; do
    if [ "$BACKEND" = xenmesh ]; then
      ls -l /proc/"$BACKEND_PID"/fd 2>/dev/null | grep -q -- "$image" && fail "the backend still has $image open"
    else
      losetup -a | grep -q -- "$image" && fail "a loop device still holds $image"
    fi
  done
  info "no backend holds $* open"
}

# destroy_all: every domain but dom0 destroyed (between scenarios, and after a failed one)
destroy_all() {
  local name
  for name in $(xl list 2>/dev/null | awk 'NR > 2 {print $1}'); do
    grep -qx "$name" "$XT_RUN/keep" 2>/dev/null && continue
    xl_run $DESTROY_SECONDS destroy "$name" || echo "xl destroy $name failed"
  done
  : > "$XT_RUN/keep"
}

# keep_guest NAME: let the domain outlive the scenario, for the next one (negotiated hands its guest on)
keep_guest() { echo "$1" >> "$XT_RUN/keep"; }

# --- checking images in dom0, once the guest is gone ---
# dom0_pattern ARGS...: the pattern program, its lines to the console as INFO
dom0_pattern() { pattern -t "XENTEST INFO dom0 pattern" "$@" >&3; }

# check_final_record IMAGE LINE: the load job's "pattern final gen=G acked=A count=N" holds in the image:
# blocks [first, first+A) hold generation G, the rest G-1
check_final_record() {
  local image=$1 gen acked count
  gen=$(field "$2" gen); acked=$(field "$2" acked); count=$(field "$2" count)
  [ -n "$gen" ] && [ -n "$acked" ] && [ -n "$count" ] || fail "no acknowledgement record in '$2'"
  dom0_pattern verify "$image" "$gen" $PATTERN_FIRST "$acked" || fail "$image: acknowledged writes missing"
  if [ "$gen" -gt 1 ]; then
    dom0_pattern verify "$image" $((gen - 1)) $((PATTERN_FIRST + acked)) $((count - acked)) ||
      fail "$image: blocks past the acknowledged ones do not hold the previous pass"
  fi
}

# check_fs_image IMAGE NAME OFFSET: e2fsck -fn is clean, and every file the guest recorded ("DOMU: file
# path=P md5=M" past OFFSET in its console) has that checksum when debugfs reads it from the image
check_fs_image() {
  local image=$1 line p m got n=0
  if ! e2fsck -fn "$image" > "$XT_RUN/e2fsck.log" 2>&1; then
    show "$XT_RUN/e2fsck.log" 20 e2fsck
    fail "e2fsck -fn $image is not clean"
  fi
  info "e2fsck -fn $image: clean"
  while read -r line; do
    p=$(field "$line" path); m=$(field "$line" md5)
    got=$(debugfs -R "cat $p" "$image" 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$got" = "$m" ] || fail "$image: $p has md5 $got in dom0, the guest wrote $m"
    n=$((n + 1))
  done < <(console_since "$2" "$3" | grep 'DOMU: file path=')
  [ $n -gt 0 ] || fail "the guest recorded no files to compare with the image"
  info "debugfs: $n files in $image match the guest's checksums"
}

# show_guest_conclusions: what the scenario's guests concluded (their "DOMU:" lines, without the load job's
# progress records, which are many) and what their kernels complained about (loglevel=4: warnings and
# errors only), as INFO lines; run.sh calls it at the end of every scenario
show_guest_conclusions() {
  local name offset
  while read -r name offset; do
    console_since "$name" "$offset" | grep -E 'DOMU: |^\[ *[0-9]+\.[0-9]+\]' |
      grep -v 'DOMU: pattern acked\|DOMU: pattern verify pass' |
      sed 's/.*DOMU: //' | while IFS= read -r l; do info "$name| $l"; done
  done < "$XT_RUN/guests"
  : > "$XT_RUN/guests"
}
