# Sourced by the build scripts: copying host programs with their libraries, and kernel modules with
# their dependencies, into an initramfs tree $R.

# copy_file PATH: copy a host file into $R at the same path; a symlink is copied with its target chain.
# With SKIP_ROOT set, files that tree already has are not copied (a second archive layered over a first).
copy_file() {
  local f=$1
  if [ -e "$R$f" ] || [ -L "$R$f" ]; then return 0; fi
  if [ -n "${SKIP_ROOT:-}" ] && { [ -e "$SKIP_ROOT$f" ] || [ -L "$SKIP_ROOT$f" ]; }; then return 0; fi
  mkdir -p "$R$(dirname "$f")"
  cp -a "$f" "$R$f"
  if [ -L "$f" ]; then
    local t; t=$(readlink "$f")
    case "$t" in
      /lib/*|/lib64/*|/bin/*|/sbin/*) copy_file "/usr$t" ;;  # usr-merged host: keep everything under /usr
      /*) copy_file "$t" ;;
      *) copy_file "$(dirname "$f")/$t" ;;
    esac
  fi
}

# copy_libs ELF: copy the shared libraries an ELF needs (as ldd resolves them on this host).
copy_libs() {
  local f=$1 lib
  file -L "$f" | grep -q 'dynamically linked' || return 0
  # "libx.so => /path (addr)", and the loader itself as "/lib64/ld-linux-x86-64.so.2 (addr)"
  for lib in $(ldd "$f" | awk '/not found/ {print "MISSING:" $1; next} /=>/ {print $3} /^\t\// {print $1}'); do
    case "$lib" in
      MISSING:*) echo "WARNING: $f needs ${lib#MISSING:}, not found" >&2; continue ;;
    esac
    # this host is usr-merged: keep one copy under /usr, the /lib* symlinks in $R point there
    case "$lib" in /lib/*|/lib64/*) lib=/usr$lib ;; esac
    copy_file "$lib"
  done
}

# copy_bin PATH...: programs with their libraries
copy_bin() {
  local f
  for f in "$@"; do copy_file "$f"; copy_libs "$f"; done
}

# usr_merged_root: the top-level layout of a usr-merged root in $R (bin, sbin, lib, lib64 -> usr/...)
usr_merged_root() {
  mkdir -p "$R"/usr/bin "$R"/usr/sbin "$R"/usr/lib "$R"/usr/lib64
  ln -sfn usr/bin "$R"/bin; ln -sfn usr/sbin "$R"/sbin; ln -sfn usr/lib "$R"/lib; ln -sfn usr/lib64 "$R"/lib64
}

# busybox_links DIR: busybox in DIR and a link for each applet that DIR does not have yet
busybox_links() {
  local d=$1 a
  cp "$X/bin/busybox" "$R$d/busybox"
  for a in $("$X/bin/busybox" --list); do
    [ -e "$R$d/$a" ] || ln -s busybox "$R$d/$a"
  done
}

# modinfo_field KO FIELD: a field of a module's .modinfo section (no kmod on this host, no modules.dep in
# the package: the fields are NUL-separated "key=value" strings in the .ko)
modinfo_field() {
  tr '\0' '\n' < "$1" | sed -n "s/^$2=//p"
}

# module_order NAME...: the .ko paths (relative to lib/modules/$KV) of the named modules and everything they
# depend on ("depends=" and "softdep=pre:"), each after its dependencies: the order to insmod them in.
module_order() {
  local mdir=$X/lib/modules/$KV seen="" out=""
  visit() {
    local name=${1//-/_} ko dep
    case " $seen " in *" $name "*) return 0 ;; esac
    seen="$seen $name"
    ko=$(cd "$mdir" && find kernel -name "$name.ko" -o -name "${name//_/-}.ko" | head -n1)
    if [ -z "$ko" ]; then
      # a softdep names an alias (e.g. crypto-crc32c): the generic C implementation provides it
      ko=$(cd "$mdir" && grep -rlaF --include='*.ko' "alias=$1" kernel | grep generic | head -n1)
      [ -n "$ko" ] || { grep -qw "$name" "$mdir/modules.builtin" 2>/dev/null && return 0
                        echo "module_order: no module $1 for $KV" >&2; return 1; }
    fi
    for dep in $(modinfo_field "$mdir/$ko" depends | tr ',' ' ') \
               $(modinfo_field "$mdir/$ko" softdep | sed -n 's/^pre: *//p'); do
      visit "$dep"
    done
    out="$out $ko"
  }
  local m
  for m in "$@"; do visit "$m"; done
  echo $out
}

# inputs_signature INPUT...: a digest of the path, size and modification time of every file under the INPUTs
inputs_signature() {
  find -L "$@" -type f -printf '%p %s %T@\n' 2>/dev/null | LC_ALL=C sort | sha256sum | cut -d' ' -f1
}

# up_to_date OUTPUT INPUT...: true when OUTPUT was built (built_from) from these very inputs: the same files
# with the same sizes and times. Comparing times with OUTPUT's alone would take an archive built from another
# checkout, or after the tree was rebuilt from older sources, for current. FORCE=1: never.
up_to_date() {
  local out=$1; shift
  [ "${FORCE:-0}" != 1 ] && [ -e "$out" ] && [ -e "$out.inputs" ] || return 1
  [ "$(cat "$out.inputs")" = "$(inputs_signature "$@")" ]
}

# built_from OUTPUT INPUT...: records the inputs OUTPUT was just built from, for up_to_date
built_from() {
  local out=$1; shift
  inputs_signature "$@" > "$out.inputs"
}

# cpio_tree DIR OUTPUT: an uncompressed newc archive of DIR, owned by root. Uncompressed on purpose: under
# TCG, the kernel inflating a gzip initramfs costs seconds per boot, copying an uncompressed one almost nothing.
cpio_tree() {
  (cd "$1" && find . | "$X/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null) > "$2.tmp"
  mv "$2.tmp" "$2"
}
