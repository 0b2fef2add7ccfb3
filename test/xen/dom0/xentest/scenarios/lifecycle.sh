# lifecycle: one image through a guest's life events.
#   xl destroy while the guest writes: the domain and its device dirs go; the backend is not wedged: the
#     next guest created with the same image gets the disk, finds only whole pattern blocks, and its own
#     pattern and fsck checks pass (job basic)
#   xl reboot: the guest comes back (a new domain) with its disk and finds on it, unchanged, the pattern
#     and the files it wrote before the reboot (its saved config is updated first with xl config-update,
#     so that the new boot runs job recheck instead of writing again)
#   xl shutdown: both ends of xvda reach Closed or are removed; the image holds what the guest wrote
REBOOT_SECONDS=120    # xl reboot -> the new domain exists

scenario_lifecycle() {
  local name=lifecycle img=$IMAGES/lifecycle.img offset domid newid line gen t0
  new_image $img $IMAGE_MB

  info "xl destroy while the guest writes"
  offset=$(console_offset $name)
  create_guest $name load $img
  wait_guest_disk $name "$offset"
  wait_load_progress $name "$offset"
  domid=$(domid_of $name) || fail "no guest"
  t0=$SECONDS
  xl_run $DESTROY_SECONDS destroy $name || fail "xl destroy failed"
  wait_domain_gone "$domid" $XENSTORE_CLEANUP_SECONDS || fail "the domain is still in xenstore after xl destroy"
  wait_xs_gone "$(backend_dir "$domid" $VBD_XVDA)" $XENSTORE_CLEANUP_SECONDS || fail "the backend dir outlived xl destroy"
  data destroy-seconds "$(elapsed_since $t0)"
  if [ "$BACKEND" = kernel ] && losetup -a | grep -q "$img"; then fail "a loop device still holds the image"; fi

  info "a new guest on the same image"
  offset=$(console_offset $name)
  create_guest $name basic $img
  wait_guest_disk $name "$offset"
  wait_guest_result $name "$offset" basic $GUEST_JOB_SECONDS
  line=$(console_since $name "$offset" | grep -m1 'DOMU: pattern scan') || fail "no scan of the destroyed guest's blocks"
  info "guest: ${line#*DOMU: }"
  case $line in *result=ok*) ;; *) fail "the destroyed guest left torn or misplaced blocks: ${line#*DOMU: }" ;; esac

  info "xl reboot"
  domid=$(domid_of $name)
  line=$(console_since $name "$offset" | grep -m1 'DOMU: pattern-written') || fail "no pattern record"
  gen=$(field "$line" gen)
  console_since $name "$offset" | grep 'DOMU: file path=' | sed 's/.*DOMU: //' | sort > $XT_RUN/files.before
  guest_cfg $name recheck $img
  xl_run $XL_COMMAND_SECONDS config-update $name /etc/xen/$name.cfg || fail "xl config-update failed"
  offset=$(console_offset $name)
  t0=$SECONDS
  xl_run $XL_COMMAND_SECONDS reboot $name || fail "xl reboot failed"
  until newid=$(domid_of $name) && [ "$newid" != "$domid" ]; do
    [ $((SECONDS - t0)) -ge $REBOOT_SECONDS ] && fail "no new domain ${REBOOT_SECONDS}s after xl reboot"
    sleep $POLL_SECONDS
  done
  data reboot.old-domid "$domid"
  data reboot.new-domid "$newid"
  wait_xs_gone "$(backend_dir "$domid" $VBD_XVDA)" $XENSTORE_CLEANUP_SECONDS || fail "the old domain's backend dir outlived the reboot"
  wait_guest_disk $name "$offset"
  wait_guest_result $name "$offset" recheck $GUEST_JOB_SECONDS
  data reboot-seconds "$(elapsed_since $t0)"
  line=$(console_since $name "$offset" | grep -m1 'DOMU: pattern scan') || fail "no pattern scan after the reboot"
  [ "$(field "$line" valid)" = $PATTERN_COUNT ] && [ "$(field "$line" lowest-gen)" = "$gen" ] &&
    [ "$(field "$line" highest-gen)" = "$gen" ] ||
    fail "after the reboot the disk does not hold the pattern of generation $gen: ${line#*DOMU: }"
  console_since $name "$offset" | grep 'DOMU: file path=' | sed 's/.*DOMU: //' | sort > $XT_RUN/files.after
  cmp -s $XT_RUN/files.before $XT_RUN/files.after ||
    fail "after the reboot the files differ: $(diff $XT_RUN/files.before $XT_RUN/files.after | tr '\n' ' ')"
  info "after the reboot: pattern generation $gen and $(wc -l < $XT_RUN/files.after) files as written before it"

  info "xl shutdown"
  shutdown_guest $name
  check_image_closed $img
  dom0_pattern verify $img "$gen" $PATTERN_FIRST $PATTERN_COUNT || fail "the image does not hold the guest's pattern"
  check_fs_image $img $name "$offset"
  rm -f $img
  scenario_ended
}
