# hotplug: while the guest carries I/O on xvda (job load), a second image is attached as xvdb (xl
# block-attach); the guest sees it, writes and reads back a pattern on it; it is detached (xl block-detach),
# the guest sees it go and libxl removes its backend dir. xvda's load carries on throughout: after the guest
# is shut down, its acknowledged writes are in the image and its filesystem is clean; xvdb's image holds
# the guest's pattern. This guest has two vCPUs and asks xen-blkfront for up to 4 queues of 4-page rings,
# so its disks run on several multi-page rings (checked, and reported as hotplug.summary.*).
HOTPLUG_IO_SECONDS=120   # xvdb attached -> the guest wrote and read back its pattern on it
HOTPLUG_GONE_SECONDS=60  # xl block-detach returned -> the guest has no xvdb any more
HOTPLUG_VCPUS=2          # blkfront opens a queue per vCPU, up to what the backend offers
HOTPLUG_BLKFRONT=max_ring_page_order=2:max_queues=4   # 4-page rings
# xen-blkfront with persistent grants allocates a page for every segment of every request slot of every ring
# when it connects: 2 rings of 16 pages (512 slots) with 33 segments each are 132 MiB per disk, and a 160 MiB
# guest asking for them never connected its disk; 4-page rings (128 slots) are 33 MiB per disk.
HOTPLUG_MEMORY_MB=256
HOTPLUG_RING_PAGES=4

scenario_hotplug() {
  local name=hotplug a=$IMAGES/hotplug-a.img b=$IMAGES/hotplug-b.img offset mark domid line gen t0
  new_image $a $IMAGE_MB
  new_image $b $SECOND_DISK_MB
  offset=$(console_offset $name)
  GUEST_MEMORY_MB=$HOTPLUG_MEMORY_MB GUEST_VCPUS=$HOTPLUG_VCPUS GUEST_BLKFRONT=$HOTPLUG_BLKFRONT create_guest $name load $a
  wait_guest_disk $name "$offset"
  domid=$(domid_of $name) || fail "no guest"
  report_negotiation "$domid" $VBD_XVDA hotplug.
  [ "$QUEUES" = $HOTPLUG_VCPUS ] || fail "xvda has $QUEUES queue(s), not one per vCPU ($HOTPLUG_VCPUS)"
  [ "$RING_PAGES" = $HOTPLUG_RING_PAGES ] || fail "xvda's rings have $RING_PAGES page(s), not the $HOTPLUG_RING_PAGES asked for"
  wait_load_progress $name "$offset"

  t0=$SECONDS
  xl_run $BLOCK_DEVICE_SECONDS block-attach $name "$(disk_spec xvdb $b)" || fail "xl block-attach failed"
  data attach-seconds "$(elapsed_since $t0)"
  line=$(wait_console $name "$offset" 'DOMU: xvdb io=' $HOTPLUG_IO_SECONDS) ||
    fail "the guest did not use xvdb within ${HOTPLUG_IO_SECONDS}s"
  case $line in *io=ok*) ;; *) show "$(console_log $name)" 10 "$name console"; fail "guest: ${line#*DOMU: }" ;; esac
  info "guest: ${line#*DOMU: }"
  gen=$(field "$line" gen)
  data xvdb.backend-state "$(xs_read "$(backend_dir "$domid" $VBD_XVDB)/state")"
  data xvdb.frontend-state "$(xs_read "$(frontend_dir "$domid" $VBD_XVDB)/state")"

  t0=$SECONDS
  xl_run $BLOCK_DEVICE_SECONDS block-detach $name xvdb || fail "xl block-detach failed"
  data detach-seconds "$(elapsed_since $t0)"
  wait_console $name "$offset" 'DOMU: xvdb gone' $HOTPLUG_GONE_SECONDS >/dev/null ||
    fail "the guest still has xvdb ${HOTPLUG_GONE_SECONDS}s after the detach"
  wait_xs_gone "$(backend_dir "$domid" $VBD_XVDB)" $XENSTORE_CLEANUP_SECONDS || fail "xvdb's backend dir was left behind"
  wait_xs_gone "$(frontend_dir "$domid" $VBD_XVDB)" $XENSTORE_CLEANUP_SECONDS || fail "xvdb's frontend dir was left behind"

  mark=$(console_offset $name)
  wait_console $name "$mark" 'DOMU: pattern acked' $LOAD_PROGRESS_SECONDS >/dev/null ||
    fail "the load on xvda stopped after the detach"
  shutdown_guest $name
  check_image_closed $a $b
  wait_guest_result $name "$offset" load 5
  line=$(console_since $name "$offset" | grep 'DOMU: pattern final' | tail -n1)
  info "guest: ${line#*DOMU: }"
  check_final_record $a "$line"
  check_fs_image $a $name "$offset"
  dom0_pattern verify $b "$gen" 0 1024 || fail "xvdb's image does not hold what the guest wrote"
  rm -f $a $b
  scenario_ended
}
