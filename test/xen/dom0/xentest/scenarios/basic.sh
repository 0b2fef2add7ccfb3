# basic: a PV guest boots with xvda (a sparse image in dom0's tmpfs); inside it the pattern written with
# O_DIRECT reads back, and an ext4 filesystem is made, written, unmounted and checked clean. Once the guest
# is shut down, dom0 checks the image itself: the pattern region holds exactly what the guest wrote,
# e2fsck -fn is clean, and debugfs reads the files back with the checksums the guest recorded.
# The guest is shared with the negotiated scenario (whichever runs first creates it).
BASIC_GUEST=basic
BASIC_IMAGE=$IMAGES/basic.img

# basic_guest_up: the basic guest is running and has its disk; its console offset at creation is kept in
# $XT_RUN/basic.offset (the guest may have been created by the previous scenario)
basic_guest_up() {
  if domid_of $BASIC_GUEST >/dev/null && [ -f $XT_RUN/basic.offset ]; then
    info "guest $BASIC_GUEST is running already"
    echo "$BASIC_GUEST $(cat $XT_RUN/basic.offset)" >> "$XT_RUN/guests"
    return 0
  fi
  local offset
  offset=$(console_offset $BASIC_GUEST)
  echo "$offset" > $XT_RUN/basic.offset
  new_image $BASIC_IMAGE $IMAGE_MB
  create_guest $BASIC_GUEST basic $BASIC_IMAGE
  wait_guest_disk $BASIC_GUEST "$offset"
}

scenario_basic() {
  basic_guest_up
  local offset line gen
  offset=$(cat $XT_RUN/basic.offset)
  wait_guest_result $BASIC_GUEST "$offset" basic $GUEST_JOB_SECONDS
  line=$(console_since $BASIC_GUEST "$offset" | grep -m1 'DOMU: pattern-written') || fail "no pattern record"
  gen=$(field "$line" gen)
  shutdown_guest $BASIC_GUEST
  check_image_closed $BASIC_IMAGE
  rm -f $XT_RUN/basic.offset
  dom0_pattern verify $BASIC_IMAGE "$gen" $PATTERN_FIRST $PATTERN_COUNT ||
    fail "the image does not hold the pattern the guest wrote (generation $gen)"
  check_fs_image $BASIC_IMAGE $BASIC_GUEST "$offset"
  rm -f $BASIC_IMAGE
  scenario_ended
}
