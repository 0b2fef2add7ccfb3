# Sourced by every script in test/xen/vm: where generated files go and which kernel is used.
#   XENMESH_XEN_DIR  work directory (downloaded .debs, extracted packages, initramfs trees, images, logs,
#                    sockets, pid files); default /tmp/xenmesh-xen. Nothing generated lives in the repo.
#   KV               Debian kernel ABI for dom0 and the guests (e.g. 6.1.0-57-amd64). If not given: what
#                    Debian's linux-image-amd64 depends on now (apt-cache), else (no package index) the one the
#                    last fetch recorded. Debian removes superseded ABIs from its mirror, so a hard pin would
#                    rot; the ABI used is recorded in $XENMESH_XEN_DIR/kver and printed by the scripts instead.
XENMESH_XEN_DIR=${XENMESH_XEN_DIR:-/tmp/xenmesh-xen}
XEN_VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)   # test/xen/vm
XEN_TEST_DIR=$(dirname "$XEN_VM_DIR")                       # test/xen
REPO_DIR=$(cd "$XEN_TEST_DIR/../.." && pwd)                 # the project
X=$XENMESH_XEN_DIR/x        # dpkg -x of the fetched packages (hypervisor, kernel, busybox)
OUT=$XENMESH_XEN_DIR/out    # built images: dom0/domU initramfs, the uncompressed hypervisor

# The kernel ABI: given > what linux-image-amd64 depends on today > recorded by the last fetch.
if [ -z "${KV:-}" ]; then
  KV=$(apt-cache depends linux-image-amd64 2>/dev/null \
       | awk '/Depends: linux-image-[0-9]/ {sub(/^linux-image-/, "", $2); print $2; exit}')
fi
if [ -z "${KV:-}" ] && [ -f "$XENMESH_XEN_DIR/kver" ]; then
  KV=$(cat "$XENMESH_XEN_DIR/kver")
fi
[ -n "${KV:-}" ] || { echo "env.sh: cannot tell the kernel ABI (apt-get update, or set KV)" >&2; exit 1; }
export XENMESH_XEN_DIR KV
