# driverdomain: xenmesh as a real driver domain, the case the FreeBSD layering was split for. A PV domU
# (dom0's own tree as its ramdisk, driverdomain/init as its /init) runs xenmesh backend over the Xen
# platform with its xenstore over /dev/xen/xenbus, serving an image in its own memory; a Linux guest whose
# disk line names it (backend=<driver domain>) boots from dom0's toolstack and follows its backend's state
# from its own side.
# - Detach: the guest writes and verifies data (the basic job); xl shutdown of the driver domain: the
#   backend answers what is in flight, flushes, closes the image and publishes Closing then Closed before
#   the domain goes, and the guest sees Closed (its disk goes), not a hang.
# - Failure: a second driver domain, started alongside, serves a second guest and is destroyed (xl destroy:
#   nothing in it runs again); its backend directory goes with the domain's home, and the guest, watching
#   its backend's state, sees it gone, while the guest and its frontend directory stay.
DD=xsdriver                    # shut down under its guest
DD_FAILING=xsdriverb           # destroyed under its guest
DD_GUEST=ddguest               # its disk goes as the driver domain shuts down
DD_FAIL_GUEST=ddfail           # its disk's driver domain is destroyed under it
DD_MEMORY_MB=512               # node, its workers, and the guest's image in the domain's memory
DD_IMAGE_MB=128
DD_VCPUS=1                     # a second one did not shorten its start (kernel, 130 MB of ramdisk, node: ~95 s)
DD_INITRD=/var/lib/xen/dd-initrd.cpio
DD_READY_SECONDS=300           # xl create, the kernel unpacking ~150 MB, node starting, under TCG
DD_CLOSED_SECONDS=120          # xl shutdown of the driver domain -> the guest saw its backend Closed
DD_GONE_SECONDS=60             # xl destroy of the driver domain -> the guest saw its backend's node go
DD_PATTERN_COUNT=1024          # the basic job's pattern, half its usual: the filesystem checks stay

# build_dd_initrd: dom0's tree (what a domain needs to run node and xenmesh, without the guests' kernel and
# images), then a second archive over it with the driver domain's /init and /sbin/poweroff
build_dd_initrd() {
  local stage=$XT_RUN/dd-stage t0=$SECONDS
  rm -rf $stage; mkdir -p $stage/usr/sbin
  cp $XT/driverdomain/init $stage/init
  cp $XT/driverdomain/poweroff $stage/usr/sbin/poweroff
  ln -s poweroff $stage/usr/sbin/reboot
  (cd / && find bin sbin lib lib64 usr etc opt -xdev -path opt/xentest -prune -o -print | cpio -o -H newc 2>/dev/null) > $DD_INITRD.tmp ||
    fail "cannot archive dom0's tree for the driver domain"
  (cd $stage && find . -mindepth 1 | cpio -o -H newc 2>/dev/null) >> $DD_INITRD.tmp || fail "cannot archive the driver domain's init"
  mv $DD_INITRD.tmp $DD_INITRD
  data driverdomain.initrd-mib $(($(stat -c %s $DD_INITRD) / 1048576))
  data driverdomain.initrd-seconds $((SECONDS - t0))
}

# create_dd NAME: xl create of a driver domain (xenmesh backend over /dev/xen/xenbus); sets DD_DOMID[NAME] and
# DD_OFFSET[NAME]
create_dd() {
  local name=$1
  DD_OFFSET[$name]=$(console_offset $name)
  grep -q "^$name " "$XT_RUN/guests" 2>/dev/null || echo "$name ${DD_OFFSET[$name]}" >> "$XT_RUN/guests"
  cat > /etc/xen/$name.cfg <<EOF
name = "$name"
type = "pv"
kernel = "/root/domU/vmlinux"
ramdisk = "$DD_INITRD"
extra = "console=hvc0 loglevel=4 xdd_image_mb=$DD_IMAGE_MB"
memory = $DD_MEMORY_MB
vcpus = $DD_VCPUS
driver_domain = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "preserve"
EOF
  info "xl create $name (driver domain: xenmesh backend over /dev/xen/xenbus)"
  xl_run $XL_CREATE_SECONDS create /etc/xen/$name.cfg || fail "xl create $name failed"
  DD_DOMID[$name]=$(domid_of $name) || fail "no domain $name"
}

# wait_dd_ready NAME: until the driver domain's backend is ready
wait_dd_ready() {
  local name=$1 line
  line=$(wait_console $name "${DD_OFFSET[$name]}" 'DOMU: backend ready|DOMU: backend not ready' $DD_READY_SECONDS) || {
    show "$(console_log $name)" 25 "$name console"
    fail "the driver domain's backend was not ready within ${DD_READY_SECONDS}s"
  }
  case $line in *"not ready"*) show "$(console_log $name)" 25 "$name console"; fail "$name's backend did not start" ;; esac
  info "$name (domain ${DD_DOMID[$name]}): ${line#*DOMU: }"
}

# create_dd_guest NAME JOB DD: a guest whose xvda the driver domain DD serves, running JOB; sets
# GUEST_DOMID[NAME] and GUEST_OFFSET[NAME]
create_dd_guest() {
  local name=$1 dd=$3
  GUEST_OFFSET[$name]=$(console_offset $name)
  GUEST_DISK="backend=$dd, format=raw, vdev=xvda, access=rw, backendtype=phy, target=/srv/guest.img" \
    create_guest $name $2 /srv/guest.img
  GUEST_DOMID[$name]=$(domid_of $name) || fail "no domain $name"
  xs_exists "/local/domain/${DD_DOMID[$dd]}/backend/vbd/${GUEST_DOMID[$name]}/$VBD_XVDA" ||
    fail "libxl did not write $name's backend under $dd"
}

# dd_guest_saw NAME LABEL SECONDS WHAT: the guest's line saying its backend closed or went (LABEL backend
# closed|gone, from follow_backend in guest/init), within SECONDS of WHAT
dd_guest_saw() {
  wait_console $1 "${GUEST_OFFSET[$1]}" "DOMU: $2 backend (closed|gone)" $3 || {
    show "$(console_log $1)" 15 "$1 console"
    fail "the guest did not see its backend close or go within ${3}s of $4"
  }
}

scenario_driverdomain() {
  local line states fe dd
  declare -A DD_DOMID DD_OFFSET GUEST_DOMID GUEST_OFFSET
  build_dd_initrd
  # both driver domains start together, each guest as soon as its driver domain serves: each domain has
  # one vCPU, and the machine two
  for dd in $DD $DD_FAILING; do create_dd $dd; done
  local PATTERN_COUNT=$DD_PATTERN_COUNT
  wait_dd_ready $DD
  create_dd_guest $DD_GUEST ddbasic $DD
  wait_dd_ready $DD_FAILING
  create_dd_guest $DD_FAIL_GUEST ddfollow $DD_FAILING
  wait_guest_disk $DD_GUEST "${GUEST_OFFSET[$DD_GUEST]}"
  wait_guest_disk $DD_FAIL_GUEST "${GUEST_OFFSET[$DD_FAIL_GUEST]}"

  # detach: the driver domain is shut down; its guest must see its disk closed, not wait for ever
  wait_guest_result $DD_GUEST "${GUEST_OFFSET[$DD_GUEST]}" basic $GUEST_JOB_SECONDS
  wait_console $DD_GUEST "${GUEST_OFFSET[$DD_GUEST]}" 'DOMU: ddbasic following' 60 >/dev/null || fail "$DD_GUEST does not follow its backend's state"
  report_negotiation_dd "${GUEST_DOMID[$DD_GUEST]}" "${DD_DOMID[$DD]}"
  xl_run $XL_COMMAND_SECONDS shutdown $DD || fail "xl shutdown $DD failed"
  line=$(dd_guest_saw $DD_GUEST ddbasic $DD_CLOSED_SECONDS "xl shutdown $DD") || { show "$(console_log $DD)" 20 "$DD console"; exit 1; }
  states=$(field "$line" states)
  data driverdomain.guest-saw-backend-states "$states"
  case ",$states," in *,6,*) ;; *) fail "the guest saw the backend go without Closed (states $states)" ;; esac
  info "guest $DD_GUEST saw its backend: ${line#*DOMU: }"
  wait_domain_gone "${DD_DOMID[$DD]}" $SHUTDOWN_SECONDS || fail "the driver domain did not go within ${SHUTDOWN_SECONDS}s"
  console_since $DD "${DD_OFFSET[$DD]}" | grep -q 'DOMU: image closed' || { show "$(console_log $DD)" 20 "$DD console"; fail "the driver domain went with its image open"; }
  console_since $DD "${DD_OFFSET[$DD]}" | grep -q 'then the devices' || fail "the backend did not close its devices on its way out"
  info "the driver domain answered, flushed, closed its image and its devices before it went"

  # failure: a driver domain destroyed under its guest, which must see its backend go
  wait_console $DD_FAIL_GUEST "${GUEST_OFFSET[$DD_FAIL_GUEST]}" 'DOMU: ddfollow following' 60 >/dev/null || fail "$DD_FAIL_GUEST does not follow its backend's state"
  report_negotiation_dd "${GUEST_DOMID[$DD_FAIL_GUEST]}" "${DD_DOMID[$DD_FAILING]}"
  xl_run $DESTROY_SECONDS destroy $DD_FAILING || fail "xl destroy $DD_FAILING failed"
  line=$(dd_guest_saw $DD_FAIL_GUEST ddfollow $DD_GONE_SECONDS "xl destroy $DD_FAILING") || exit 1   # its reason is written
  states=$(field "$line" states)
  data driverdomain.failed-guest-saw-backend-states "$states"
  case $states in *,gone) ;; *) fail "the guest saw its destroyed backend as $states, not gone" ;; esac
  info "guest $DD_FAIL_GUEST saw its destroyed backend: ${line#*DOMU: }"
  wait_domain_gone "${DD_DOMID[$DD_FAILING]}" $DESTROY_SECONDS || fail "the destroyed driver domain's home outlived it"
  fe=$(frontend_dir "${GUEST_DOMID[$DD_FAIL_GUEST]}" $VBD_XVDA)
  xs_exists "$fe/state" || fail "the guest's frontend directory went with the driver domain"
  domid_of $DD_FAIL_GUEST > /dev/null || fail "the guest did not outlive its driver domain"
  info "$DD_FAIL_GUEST outlived its driver domain: its frontend directory stays (state $(xs_read "$fe/state")), its backend's is gone"
  rm -f $DD_INITRD
  scenario_ended
}

# report_negotiation_dd DOMID DD_DOMID: both ends Connected, the backend in the driver domain's home
report_negotiation_dd() {
  local fe be
  fe=$(frontend_dir "$1" $VBD_XVDA); be=/local/domain/$2/backend/vbd/$1/$VBD_XVDA
  [ "$(xs_read "$fe/backend")" = "$be" ] || fail "the frontend names backend $(xs_read "$fe/backend"), not $be"
  [ "$(xs_read "$be/state")" = 4 ] || fail "backend state $(xs_read "$be/state"), not Connected (4)"
  data driverdomain.backend-features "$(for k in feature-persistent feature-flush-cache feature-discard feature-max-indirect-segments; do printf '%s=%s,' $k "$(xs_read "$be/$k" || echo -)"; done)"
}
