# driverdomain: xenmesh as a real driver domain, the case the FreeBSD layering was split for. A PV domU
# (dom0's own tree as its ramdisk, driverdomain/init as its /init) runs xenmesh backend over the Xen
# platform with its xenstore over /dev/xen/xenbus, serving an image in its own memory; a Linux guest whose
# disk line names it (backend=<driver domain>) boots from dom0's toolstack, writes and verifies data (the
# basic job), then follows its backend's state from its own side. xl shutdown of the driver domain: the
# backend answers what is in flight, flushes, closes the image and publishes Closing then Closed before the
# domain goes, and the guest sees Closed (its disk goes), not a hang.
DD=xsdriver
DD_GUEST=ddguest
DD_MEMORY_MB=512               # node, its workers, and the guest's image in the domain's memory
DD_IMAGE_MB=128
DD_VCPUS=1                     # a second one did not shorten its start (kernel, 130 MB of ramdisk, node: ~95 s)
DD_INITRD=/var/lib/xen/dd-initrd.cpio
DD_READY_SECONDS=300           # xl create, the kernel unpacking ~150 MB, node starting, under TCG
DD_CLOSED_SECONDS=120          # xl shutdown of the driver domain -> the guest saw its backend Closed
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

scenario_driverdomain() {
  local dd_offset offset dd_domid domid line states
  build_dd_initrd
  dd_offset=$(console_offset $DD)
  grep -q "^$DD " "$XT_RUN/guests" 2>/dev/null || echo "$DD $dd_offset" >> "$XT_RUN/guests"
  cat > /etc/xen/$DD.cfg <<EOF
name = "$DD"
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
  info "xl create $DD (driver domain: xenmesh backend over /dev/xen/xenbus)"
  xl_run $XL_CREATE_SECONDS create /etc/xen/$DD.cfg || fail "xl create $DD failed"
  dd_domid=$(domid_of $DD) || fail "no domain $DD"
  line=$(wait_console $DD "$dd_offset" 'DOMU: backend ready|DOMU: backend not ready' $DD_READY_SECONDS) || {
    show "$(console_log $DD)" 25 "$DD console"
    fail "the driver domain's backend was not ready within ${DD_READY_SECONDS}s"
  }
  case $line in *"not ready"*) show "$(console_log $DD)" 25 "$DD console"; fail "the driver domain's backend did not start" ;; esac
  info "$DD (domain $dd_domid): ${line#*DOMU: }"

  # the guest's disk is served by the driver domain; libxl writes its backend there
  local PATTERN_COUNT=$DD_PATTERN_COUNT
  offset=$(console_offset $DD_GUEST)
  GUEST_DISK="backend=$DD, format=raw, vdev=xvda, access=rw, backendtype=phy, target=/srv/guest.img" \
    create_guest $DD_GUEST ddbasic /srv/guest.img
  domid=$(domid_of $DD_GUEST) || fail "no domain $DD_GUEST"
  xs_exists "/local/domain/$dd_domid/backend/vbd/$domid/$VBD_XVDA" || fail "libxl did not write the backend under the driver domain"
  wait_guest_disk $DD_GUEST "$offset"
  wait_guest_result $DD_GUEST "$offset" basic $GUEST_JOB_SECONDS
  wait_console $DD_GUEST "$offset" 'DOMU: ddbasic following' 60 >/dev/null || fail "the guest does not follow its backend's state"
  report_negotiation_dd "$domid" "$dd_domid"

  # the driver domain goes: its guest must see its disk closed, not wait for ever
  xl_run $XL_COMMAND_SECONDS shutdown $DD || fail "xl shutdown $DD failed"
  line=$(wait_console $DD_GUEST "$offset" 'DOMU: ddbasic backend (closed|gone)' $DD_CLOSED_SECONDS) || {
    show "$(console_log $DD)" 20 "$DD console"
    show "$(console_log $DD_GUEST)" 15 "$DD_GUEST console"
    fail "the guest did not see its backend close within ${DD_CLOSED_SECONDS}s of xl shutdown $DD"
  }
  states=$(field "$line" states)
  data driverdomain.guest-saw-backend-states "$states"
  case ",$states," in *,6,*) ;; *) fail "the guest saw the backend go without Closed (states $states)" ;; esac
  info "guest $DD_GUEST saw its backend: ${line#*DOMU: }"
  wait_domain_gone "$dd_domid" $SHUTDOWN_SECONDS || fail "the driver domain did not go within ${SHUTDOWN_SECONDS}s"
  console_since $DD "$dd_offset" | grep -q 'DOMU: image closed' || { show "$(console_log $DD)" 20 "$DD console"; fail "the driver domain went with its image open"; }
  console_since $DD "$dd_offset" | grep -q 'then the devices' || fail "the backend did not close its devices on its way out"
  info "the driver domain answered, flushed, closed its image and its devices before it went"
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
