# negotiated: what the real xen-blkfront, as it loads by default (one ring of one page), and the backend
# agreed on, read from xenstore while the guest is connected: both directories of xvda as DATA
# (frontend.<key>, backend.<key>), and a summary (rings, ring pages, persistent grants, indirect segments,
# discard, flush/barrier). It uses the basic scenario's guest (creating it if needed) and leaves it running
# for that scenario. The hotplug scenario's guest asks for several rings of several pages.
scenario_negotiated() {
  basic_guest_up
  local domid
  domid=$(domid_of $BASIC_GUEST) || fail "no guest"
  report_negotiation "$domid" $VBD_XVDA ""
  keep_guest $BASIC_GUEST
  scenario_ended
}
