#!/bin/bash
# Download the Debian packages the VM is made of (apt-get download) and extract them (dpkg -x):
#   the Xen 4.17 hypervisor, a static busybox (the userland of dom0 and the guests) and the kernel
#   linux-image-$KV (dom0 and the guests run the same one). Xen's userspace, node and e2fsprogs are
#   copied from this host instead (build-dom0.sh), so they match what the project is tested with.
# Idempotent: a package already downloaded and extracted is skipped.
# Output: $XENMESH_XEN_DIR/debs/*.deb, $X/ (extracted), $OUT/xen-4.17 (gunzipped hypervisor), kver.
set -euo pipefail
. "$(dirname "$0")/env.sh"
echo "fetch: kernel $KV, work dir $XENMESH_XEN_DIR"
PKGS="xen-hypervisor-4.17-amd64 busybox-static linux-image-$KV"
mkdir -p "$XENMESH_XEN_DIR/debs" "$X" "$OUT"
chmod 777 "$XENMESH_XEN_DIR/debs"   # apt-get download drops privileges to _apt when it can
cd "$XENMESH_XEN_DIR/debs"

need=()
for p in $PKGS; do
  ls "${p}"_*.deb >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  # a stale package index lacks a new ABI or points at removed versions: refresh once and retry
  apt-get download "${need[@]}" || { apt-get update >/dev/null && apt-get download "${need[@]}"; }
fi

# dpkg -x again only when the .deb is newer than the stamp of its last extraction
for p in $PKGS; do
  deb=$(ls "${p}"_*.deb | tail -n1)
  stamp=$X/.extracted-$p
  if [ ! -f "$stamp" ] || [ "$deb" -nt "$stamp" ]; then
    dpkg -x "$deb" "$X"
    touch "$stamp"
  fi
done

# QEMU's multiboot loader takes only the uncompressed ELF image of the hypervisor
if [ ! -f "$OUT/xen-4.17" ] || [ "$X/boot/xen-4.17-amd64.gz" -nt "$OUT/xen-4.17" ]; then
  zcat "$X"/boot/xen-4.17-amd64.gz > "$OUT/xen-4.17"
fi
[ -f "$X/boot/vmlinuz-$KV" ] || { echo "fetch: $X/boot/vmlinuz-$KV missing"; exit 1; }

# The kernel as a plain ELF (vmlinux): Xen boots dom0 from it and libxl builds each guest from it without
# decompressing the bzImage's payload first, which under TCG costs seconds per boot. The payload is the
# first xz (or gzip/zstd) stream in the bzImage.
extract_vmlinux() {  # BZIMAGE OUTPUT
  local i off
  local magic=($'\xfd7zXZ' $'\x1f\x8b\x08' $'\x28\xb5\x2f\xfd')   # xz, gzip, zstd stream starts
  local unpack=("xz -dc --single-stream" "gzip -dc" "zstd -dc")
  for i in 0 1 2; do
    for off in $(LC_ALL=C grep -abo "${magic[$i]}" "$1" | cut -d: -f1 | head -n 5); do
      tail -c +$((off + 1)) "$1" | ${unpack[$i]} > "$2.tmp" 2>/dev/null || true
      if file "$2.tmp" | grep -q 'ELF 64-bit'; then mv "$2.tmp" "$2"; return 0; fi
    done
  done
  rm -f "$2.tmp"; return 1
}
if [ ! -f "$OUT/vmlinux-$KV" ] || [ "$X/boot/vmlinuz-$KV" -nt "$OUT/vmlinux-$KV" ]; then
  extract_vmlinux "$X/boot/vmlinuz-$KV" "$OUT/vmlinux-$KV" || { echo "fetch: no ELF kernel in vmlinuz-$KV"; exit 1; }
fi
echo "$KV" > "$XENMESH_XEN_DIR/kver"
echo "fetch: ok (kernel $KV)"
