#!/usr/bin/env bash
# make deps: install what isboot's build, tests and demo need. Idempotent: a second
# run checks stamps and returns in seconds.
set -euo pipefail

CACHE="${ISBOOT_CACHE:-${HOME:-/root}/.cache/isboot}"
PKGS=(qemu-system-x86 ipxe-qemu ovmf tgt istgt libiscsi-bin qemu-utils qemu-block-extra
      libnbd-bin nbdkit fio e2fsprogs busybox-static kmod cpio debootstrap iproute2
      gdisk fdisk dosfstools util-linux procps)

log() { echo "deps: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
	log "not root: skipping package install (run 'sudo make deps' once)"
else
	missing=()
	for p in "${PKGS[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq || { log "apt-get update failed"; exit 1; }
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
			{ log "apt-get install failed for: ${missing[*]}"; exit 1; }
		# tgt's package starts tgtd as a service; tests run their own on other ports.
		systemctl stop tgt 2>/dev/null || true
		pkill -x tgtd 2>/dev/null || true
	fi
fi

# The Debian kernel, unpacked (never installed) into the cache, with modules.dep/alias.
mkdir -p "$CACHE/kernel"
if [ -f "$CACHE/kernel/current" ] && [ -f "$CACHE/kernel/$(cat "$CACHE/kernel/current")/.done" ]; then
	kver="$(cat "$CACHE/kernel/current")"
else
	pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
	[ -n "$pkg" ] || { log "cannot resolve linux-image-amd64 (apt-get update?)"; exit 1; }
	kver="${pkg#linux-image-}"
	dir="$CACHE/kernel/$kver"
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' EXIT
	log "fetching kernel $pkg"
	(cd "$tmp" && apt-get download -qq "$pkg" >/dev/null) || { log "apt-get download $pkg failed"; exit 1; }
	rm -rf "$dir"; mkdir -p "$dir"
	dpkg-deb -x "$tmp"/*.deb "$dir"
	command -v depmod >/dev/null || { log "depmod missing: install kmod"; exit 1; }
	depmod -b "$dir" "$kver"
	touch "$dir/.done"
	echo "$kver" > "$CACHE/kernel/current"
fi
for f in "$CACHE/kernel/$kver/boot/vmlinuz-$kver" "$CACHE/kernel/$kver/lib/modules/$kver/modules.dep" "$CACHE/kernel/$kver/lib/modules/$kver/modules.alias"; do
	[ -s "$f" ] || { log "missing $f"; exit 1; }
done

for t in qemu-system-x86_64 tgtd tgtadm nbdinfo nbdcopy iscsi-perf qemu-img mke2fs busybox cpio dpkg-deb chroot; do
	command -v "$t" >/dev/null || log "warning: $t not found (some tests will fail)"
done
log "ok: kernel $kver in $CACHE/kernel/$kver"
