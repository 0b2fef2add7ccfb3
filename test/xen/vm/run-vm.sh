#!/bin/bash
# Boot Xen 4.17 with the dom0 initramfs under QEMU (TCG) in the background. dom0 runs the scenarios its
# boot line names and reports through markers on the serial console (see test/xen/dom0/xentest/run.sh).
# The serial console goes to $XENMESH_XEN_DIR/serial.log (everything, from the first byte) and to the Unix
# socket serial.sock (for a person to attach: socat - UNIX-CONNECT:serial.sock); QEMU's pid is in qemu.pid.
# env: MEM       MiB of the machine (default 3072; dom0 gets DOM0_MEM of it, the guests share the rest: two
#                driver domains of 512 MiB and their guests at once in the driverdomain scenario)
#      DOM0_MEM  MiB for dom0 (default 1024: its tmpfs holds the guests' images and a save file)
#      XENTEST   scenarios to run (default all; "" boots to a shell)
#      BACKEND   xenmesh (the userspace backend, default; xen-blkback stays unloaded) or kernel (xen-blkback)
#      XENSTORED xenmesh (xenmesh's xenstored, default) or c (Xen's C xenstored): the daemon dom0 runs
#      XENMESH_LOG  the userspace backend's log level (passed on as xenmesh_log=<level>)
#      XENMESH_BACKEND_ARGS  its options, comma-separated (e.g. --grant-access=copy)
#      XENMESH_STRACE=1      run it under strace (the end of the trace goes to the console at the end)
#      CPU       QEMU's CPU model (default Nehalem: no AVX, no XSAVE. With -cpu max, processes in the guests and
#                dom0 crash or compute garbage as soon as several of them run at once (segfaults, a register
#                full of another process's bytes, corrupt buffers), most likely because the AVX register
#                state (XSAVE) is not carried across context switches under TCG with Xen in between. With
#                Nehalem all of it is gone.)
#      XENARGS / DOM0ARGS  replace the hypervisor's / dom0's command line
# KVM cannot run Xen on these hosts: TCG only, and Xen needs smap=0 under it.
set -euo pipefail
. "$(dirname "$0")/env.sh"
D=$XENMESH_XEN_DIR
MEM=${MEM:-3072}
DOM0_MEM=${DOM0_MEM:-1024}
XENTEST=${XENTEST-all}
BACKEND=${BACKEND:-xenmesh}
XENSTORED=${XENSTORED:-xenmesh}
CPU=${CPU:-Nehalem}
XEN=$OUT/xen-4.17
KERNEL=$OUT/vmlinux-$KV
INITRD=$OUT/dom0-initrd.cpio
for f in "$XEN" "$KERNEL" "$INITRD"; do
  [ -f "$f" ] || { echo "run-vm: missing $f (fetch.sh, build-domu.sh, build-dom0.sh)"; exit 1; }
done
if [ -f "$D/qemu.pid" ] && kill -0 "$(cat "$D/qemu.pid")" 2>/dev/null; then
  echo "run-vm: QEMU is running already (pid $(cat "$D/qemu.pid")): stop-vm.sh first"; exit 1
fi

# noreboot: a crashed hypervisor stays on screen; loglvl: Xen's own messages help when dom0 fails to boot
XENARGS=${XENARGS:-"console=com1 com1=115200,8n1 dom0_mem=${DOM0_MEM}M,max:${DOM0_MEM}M dom0_max_vcpus=2 loglvl=all guest_loglvl=warning noreboot console_timestamps=boot smap=0"}
# loglevel=4: kernel chatter stays off the console, where it would interleave with the markers
DOM0ARGS=${DOM0ARGS:-"console=hvc0 earlyprintk=xen loglevel=4 xentest=$XENTEST backend=$BACKEND xenstored=$XENSTORED"}
[ "$BACKEND" = xenmesh ] && DOM0ARGS="$DOM0ARGS blkback=0"
[ -n "${XENMESH_LOG:-}" ] && DOM0ARGS="$DOM0ARGS xenmesh_log=$XENMESH_LOG"
[ -n "${XENMESH_BACKEND_ARGS:-}" ] && DOM0ARGS="$DOM0ARGS xenmesh_args=$XENMESH_BACKEND_ARGS"
[ "${XENMESH_STRACE:-0}" = 1 ] && DOM0ARGS="$DOM0ARGS xenmesh_strace=1"

rm -f "$D/serial.log" "$D/serial.sock" "$D/mon.sock"
echo "run-vm: kernel $KV, xenstored $XENSTORED, backend $BACKEND, scenarios '${XENTEST}', ${MEM} MiB (dom0 ${DOM0_MEM} MiB)"
date +%s.%N > "$D/qemu-start.ts"
# the multiboot modules: dom0's kernel with its command line, then its initramfs. QEMU separates modules
# with commas, so commas in the command line (xentest=basic,hotplug) are doubled.
qemu-system-x86_64 -machine pc -accel tcg,thread=multi -cpu "$CPU" -m "$MEM" -smp 2 \
  -nodefaults -display none -no-reboot \
  -monitor "unix:$D/mon.sock,server,nowait" \
  -chardev "socket,id=s0,path=$D/serial.sock,server=on,wait=off,logfile=$D/serial.log" -serial chardev:s0 \
  -kernel "$XEN" -append "$XENARGS" \
  -initrd "$KERNEL ${DOM0ARGS//,/,,},$INITRD" \
  > "$D/qemu.out" 2>&1 &
echo $! > "$D/qemu.pid"
echo "run-vm: QEMU pid $(cat "$D/qemu.pid"), serial log $D/serial.log"
