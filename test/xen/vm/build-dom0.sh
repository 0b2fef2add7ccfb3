#!/bin/bash
# Build dom0's initramfs: a busybox system with Xen 4.17's userspace (xl, xenstored, xenconsoled,
# xen-init-dom0, xenstore-utils and their libraries, the hotplug scripts), the kernel modules dom0 needs,
# e2fsprogs (to check guest images), the guest payload under /root/domU, the scenario scripts under
# /opt/xentest, and node with the project staged under /opt/xenmesh.
# Xen's userspace, e2fsprogs and node are copied from this host (Debian bookworm), so dom0 runs the same
# builds the project is tested with; busybox and the modules come from the packages fetch.sh extracted.
#
# Output: $OUT/dom0-initrd.cpio, the concatenation of two uncompressed archives (each rebuilt only when one
# of its inputs changed; FORCE=1 rebuilds both):
#   $OUT/dom0-base.cpio     everything but node and the project
#   $OUT/dom0-node.cpio     node, its libraries, /opt/xenmesh (package.json, dist/, build/Release/*.node and
#                           the production node_modules). Run `npm run build` (and build:native) first.
# env: XENMESH_BLOCK_SCRIPT  the no-op hotplug script installed as /etc/xen/scripts/block-xenmesh, which the
#                            disk lines of backend=xenmesh name (default: the project's scripts/block-xenmesh)
set -euo pipefail
. "$(dirname "$0")/env.sh"
. "$XEN_VM_DIR/lib.sh"
BLOCK_SCRIPT=${XENMESH_BLOCK_SCRIPT:-$REPO_DIR/scripts/block-xenmesh}
BASE=$OUT/dom0-base.cpio
NODE=$OUT/dom0-node.cpio
IMAGE=$OUT/dom0-initrd.cpio
DOMU_INITRD=$OUT/domU-initrd.cpio
VMLINUX=$OUT/vmlinux-$KV
[ -x "$X/bin/busybox" ] && [ -f "$VMLINUX" ] || { echo "build-dom0: run fetch.sh first"; exit 1; }
[ -f "$DOMU_INITRD" ] || { echo "build-dom0: run build-domu.sh first"; exit 1; }
[ -f "$BLOCK_SCRIPT" ] || { echo "build-dom0: no hotplug script $BLOCK_SCRIPT"; exit 1; }
[ -f "$REPO_DIR/dist/bin/xenmesh.js" ] || { echo "build-dom0: $REPO_DIR/dist missing: npm run build first"; exit 1; }
for p in xen-utils-4.17 xen-utils-common xenstore-utils e2fsprogs; do
  dpkg -s $p >/dev/null 2>&1 || { echo "build-dom0: host package $p is not installed"; exit 1; }
done
echo "build-dom0: kernel $KV"

# The kernel modules dom0 loads (dependencies first). xen-blkback last: /init skips it when the boot line
# says blkback=0, leaving backend/vbd to the userspace backend.
DOM0_MODULES="xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs loop xen-blkback"

build_base() {
  R=$XENMESH_XEN_DIR/rootfs-dom0
  rm -rf "$R"; mkdir -p "$R"; usr_merged_root
  mkdir -p "$R"/{proc,sys,dev,tmp,run,mnt,root,etc,var/log/xen/console,var/lib/xen/images,lib/modules/dom0}
  ln -s ../run "$R/var/run"

  # Tools the hotplug scripts (Debian's block, our block-loop) need in their full versions, as busybox's
  # lack options they use: bash, flock, losetup, stat. e2fsck and debugfs check the guests' images.
  copy_bin /usr/bin/bash /usr/bin/flock /usr/sbin/losetup /usr/bin/stat /usr/sbin/e2fsck /usr/sbin/debugfs
  # strace, when this host has it: the boot switch xenmesh_strace=1 runs the backend under it
  [ -x /usr/bin/strace ] && copy_bin /usr/bin/strace
  busybox_links /usr/bin
  # glibc dlopen()s libgcc_s for pthread_cancel and xl aborts without it; no ldd lists it
  copy_file /usr/lib/x86_64-linux-gnu/libgcc_s.so.1

  # Xen's userspace: the packages' files, minus docs, python, init scripts
  local pkg f
  for pkg in xen-utils-4.17 xen-utils-common xenstore-utils; do
    dpkg -L $pkg | while read -r f; do
      case "$f" in /usr/share/*|*/python*|*pygrub*|/.|/etc/init.d*|*/systemd*) continue ;; esac
      if [ -d "$f" ] && [ ! -L "$f" ]; then mkdir -p "$R$f"; continue; fi
      [ -e "$f" ] || [ -L "$f" ] || continue
      copy_file "$f"
      if [ -f "$f" ] && [ ! -L "$f" ]; then copy_libs "$f"; fi
    done
  done
  for pkg in $(dpkg-query -W -f '${Package}\n' 'libxen*' 2>/dev/null); do
    dpkg -L "$pkg" 2>/dev/null | grep '\.so' | while read -r f; do copy_file "$f"; done
  done
  cp "$BLOCK_SCRIPT" "$R/etc/xen/scripts/block-xenmesh"; chmod +x "$R/etc/xen/scripts/block-xenmesh"
  cp "$XEN_TEST_DIR/dom0/scripts/block-loop" "$R/etc/xen/scripts/"   # the kernel backend's (see there)

  # kernel modules, flat, with their insmod order
  local ko
  for ko in $(module_order $DOM0_MODULES); do
    cp "$X/lib/modules/$KV/$ko" "$R/lib/modules/dom0/"
    basename "$ko" .ko >> "$R/lib/modules/dom0/order"
  done

  # the guests' kernel (the ELF, see fetch.sh) and initramfs
  mkdir -p "$R/root/domU"
  cp "$VMLINUX" "$R/root/domU/vmlinux"
  cp "$DOMU_INITRD" "$R/root/domU/initrd"

  # dom0's /init, the scenario scripts, and the pattern program (dom0 checks images with it)
  cp "$XEN_TEST_DIR/dom0/init" "$R/init"; chmod +x "$R/init"
  mkdir -p "$R/opt/xentest"
  cp -a "$XEN_TEST_DIR/dom0/xentest/." "$R/opt/xentest/"
  cc -static -O2 -Wall -Wextra -o "$R/usr/bin/pattern" "$XEN_TEST_DIR/guest/pattern.c"

  echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
  echo 'root:x:0:' > "$R/etc/group"
  touch "$R/etc/fstab"
  ln -s /proc/mounts "$R/etc/mtab"
  cpio_tree "$R" "$BASE"
  echo "build-dom0: $BASE $(du -h "$BASE" | cut -f1)"
}

build_node() {
  R=$XENMESH_XEN_DIR/rootfs-node
  rm -rf "$R"; mkdir -p "$R"
  # paths only under usr/ and opt/ (the base archive's bin, lib, lib64 are symlinks into usr), and no
  # library the base archive already has
  SKIP_ROOT=$XENMESH_XEN_DIR/rootfs-dom0 copy_bin /usr/bin/node
  local app=$R/opt/xenmesh p
  mkdir -p "$app/build/Release" "$app/node_modules"
  cp "$REPO_DIR/package.json" "$app/"
  cp -a "$REPO_DIR/dist" "$app/"
  mkdir -p "$app/scripts" && cp "$REPO_DIR/scripts/xenstored-background" "$app/scripts/"   # dom0/init starts xenstored with it
  cp "$REPO_DIR"/build/Release/*.node "$app/build/Release/" 2>/dev/null \
    || echo "build-dom0: WARNING no native addon in $REPO_DIR/build/Release (npm run build:native)"
  for p in "$app"/build/Release/*.node; do   # the Xen addon links Xen's libraries (in the base already)
    [ -f "$p" ] && SKIP_ROOT=$XENMESH_XEN_DIR/rootfs-dom0 copy_libs "$p"
  done
  # the production dependencies, as npm resolves them
  (cd "$REPO_DIR" && npm ls --omit=dev --all --parseable 2>/dev/null) | while read -r p; do
    [ "$p" = "$REPO_DIR" ] && continue
    mkdir -p "$app/$(dirname "${p#"$REPO_DIR"/}")"
    cp -a "$p" "$app/${p#"$REPO_DIR"/}"
  done
  # archive only files and symlinks: the directories exist in the base archive or are created by the kernel
  (cd "$R" && find . -mindepth 1 | "$X/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null) > "$NODE.tmp"
  mv "$NODE.tmp" "$NODE"
  echo "build-dom0: $NODE $(du -h "$NODE" | cut -f1) (node $(/usr/bin/node --version))"
}

BASE_INPUTS=("$XEN_TEST_DIR/dom0" "$XEN_TEST_DIR/guest/pattern.c" "$XEN_VM_DIR/build-dom0.sh" "$XEN_VM_DIR/lib.sh"
             "$BLOCK_SCRIPT" "$DOMU_INITRD" "$VMLINUX" "$X/.extracted-busybox-static")
NODE_INPUTS=(/usr/bin/node "$REPO_DIR/package.json" "$REPO_DIR/dist" "$REPO_DIR/build/Release" "$REPO_DIR/scripts/xenstored-background"
             "$REPO_DIR/node_modules" "$XEN_VM_DIR/build-dom0.sh")
if up_to_date "$BASE" "${BASE_INPUTS[@]}"; then
  echo "build-dom0: $BASE is up to date"
else
  build_base; built_from "$BASE" "${BASE_INPUTS[@]}"
fi
if up_to_date "$NODE" "${NODE_INPUTS[@]}"; then
  echo "build-dom0: $NODE is up to date"
else
  build_node; built_from "$NODE" "${NODE_INPUTS[@]}"
fi
if ! up_to_date "$IMAGE" "$BASE" "$NODE"; then
  # the kernel unpacks concatenated newc archives in turn (each ends 4-byte aligned, as it requires)
  cat "$BASE" "$NODE" > "$IMAGE.tmp"
  mv "$IMAGE.tmp" "$IMAGE"
  built_from "$IMAGE" "$BASE" "$NODE"
fi
echo "build-dom0: $IMAGE $(du -h "$IMAGE" | cut -f1)"
