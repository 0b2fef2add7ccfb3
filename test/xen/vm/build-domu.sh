#!/bin/bash
# Build the guest (domU) initramfs: busybox, xen-blkfront and the ext4 module stack of the fetched kernel,
# mkfs.ext4/e2fsck and xenstore-utils from this host, our pattern program, and the guest's /init (test/xen/guest/),
# which picks its job from the kernel command line. The guest kernel is the same as dom0's.
# Output: $OUT/domU-initrd.cpio (skipped when built from the same inputs; FORCE=1 rebuilds).
set -euo pipefail
. "$(dirname "$0")/env.sh"
. "$XEN_VM_DIR/lib.sh"
R=$XENMESH_XEN_DIR/rootfs-domU
IMAGE=$OUT/domU-initrd.cpio
GUEST=$XEN_TEST_DIR/guest
[ -x "$X/bin/busybox" ] || { echo "build-domu: run fetch.sh first"; exit 1; }
INPUTS=("$GUEST" "$XEN_VM_DIR/build-domu.sh" "$XEN_VM_DIR/lib.sh" "$X/.extracted-linux-image-$KV")
if up_to_date "$IMAGE" "${INPUTS[@]}"; then
  echo "build-domu: $IMAGE is up to date (kernel $KV)"; exit 0
fi
echo "build-domu: kernel $KV"
rm -rf "$R"; mkdir -p "$R"; usr_merged_root
mkdir -p "$R"/{proc,sys,dev,tmp,mnt,etc,lib/modules}
busybox_links /usr/bin

# e2fsprogs from this host (mkfs.ext4 is mke2fs by another name); /etc/mtab lets them see what is mounted
copy_bin /usr/sbin/mke2fs /usr/sbin/e2fsck
ln -s mke2fs "$R/usr/sbin/mkfs.ext4"
cp /etc/mke2fs.conf "$R/etc/"
ln -s /proc/mounts "$R/etc/mtab"

# xenstore-utils, which reach xenstored through /dev/xen/xenbus in a guest (the xenstore job)
copy_bin /usr/bin/xenstore-read /usr/bin/xenstore-write /usr/bin/xenstore-ls /usr/bin/xenstore-watch

# xsabuse.ko, which misbehaves on the guest's xenstore ring (the xsabuse scenario), built against the
# fetched kernel's headers (linux-headers-$KV-amd64, installed by scripts/install-test-peers)
KBUILD=/lib/modules/$KV/build
[ -f "$KBUILD/Makefile" ] || { echo "build-domu: no kernel headers in $KBUILD: apt-get install linux-headers-$KV"; exit 1; }
rm -rf "$XENMESH_XEN_DIR/xsabuse-build"; cp -r "$GUEST/xsabuse" "$XENMESH_XEN_DIR/xsabuse-build"
make -s -C "$KBUILD" M="$XENMESH_XEN_DIR/xsabuse-build" modules > "$XENMESH_XEN_DIR/xsabuse-build/make.log" 2>&1 ||
  { cat "$XENMESH_XEN_DIR/xsabuse-build/make.log"; echo "build-domu: xsabuse.ko did not build"; exit 1; }
cp "$XENMESH_XEN_DIR/xsabuse-build/xsabuse.ko" "$R/lib/modules/"

# our block pattern writer/checker, static so that it needs nothing from the image
cc -static -O2 -Wall -Wextra -o "$R/usr/bin/pattern" "$GUEST/pattern.c"

# kernel modules, flat, with the insmod order (dependencies first) in lib/modules/order
for ko in $(module_order ext4 xen-blkfront); do
  cp "$X/lib/modules/$KV/$ko" "$R/lib/modules/"
  basename "$ko" .ko >> "$R/lib/modules/order"
done

# /init runs the job; poweroff/reboot (what the kernel runs when dom0 asks it to, e.g. xl shutdown) end it
cp "$GUEST/init" "$R/init"
cp "$GUEST/poweroff" "$R/usr/sbin/poweroff"
ln -s poweroff "$R/usr/sbin/reboot"    # one script: it looks at its name
chmod +x "$R/init" "$R/usr/sbin/poweroff"

cpio_tree "$R" "$IMAGE"
built_from "$IMAGE" "${INPUTS[@]}"
echo "build-domu: $IMAGE $(du -h "$IMAGE" | cut -f1), modules: $(tr '\n' ' ' < "$R/lib/modules/order")"
