# saverestore: xl save and xl restore of a guest while it writes (job load: the pattern, and files with
# fsync in an ext4 filesystem). After the restore the guest carries on; once shut down, it has verified
# every write it had been told was done, before and after the save (its acknowledgement record), and its
# filesystem is clean; dom0 finds the same in the image.
SAVE_FILE=/var/lib/xen/save/saverestore.save

scenario_saverestore() {
  local name=saverestore img=$IMAGES/saverestore.img offset mark domid line t0
  new_image $img $IMAGE_MB
  offset=$(console_offset $name)
  create_guest $name load $img
  wait_guest_disk $name "$offset"
  wait_load_progress $name "$offset"
  domid=$(domid_of $name) || fail "no guest"

  t0=$SECONDS
  xl_run $SAVE_SECONDS save $name $SAVE_FILE || fail "xl save failed"
  data save-seconds "$(elapsed_since $t0)"
  data save-file-bytes "$(stat -c %s $SAVE_FILE)"
  data before-save "$(console_since $name "$offset" | grep 'DOMU: pattern acked' | tail -n1 | sed 's/.*DOMU: pattern //')"
  wait_domain_gone "$domid" $XENSTORE_CLEANUP_SECONDS || fail "the saved domain is still there"
  wait_xs_gone "$(backend_dir "$domid" $VBD_XVDA)" $XENSTORE_CLEANUP_SECONDS || fail "the saved domain's backend dir is still there"

  mark=$(console_offset $name)
  t0=$SECONDS
  xl_run $SAVE_SECONDS restore $SAVE_FILE || fail "xl restore failed"
  data restore-seconds "$(elapsed_since $t0)"
  rm -f $SAVE_FILE
  data restored-domid "$(domid_of $name)"
  wait_load_progress $name "$mark"   # writes acknowledged after the restore

  shutdown_guest $name
  check_image_closed $img
  wait_guest_result $name "$offset" load 5
  line=$(console_since $name "$offset" | grep 'DOMU: pattern final' | tail -n1)
  info "guest: ${line#*DOMU: }"
  check_final_record $img "$line"
  check_fs_image $img $name "$offset"
  rm -f $img
  scenario_ended
}
