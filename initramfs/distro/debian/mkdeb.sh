#!/usr/bin/env bash
# mkdeb.sh BINARY VERSION OUTDIR: builds OUTDIR/isboot_VERSION_amd64.deb with dpkg-deb
# (make deb). The package holds /usr/sbin/isboot, the initramfs-tools hook and boot
# script, the dracut module and the docs. It has no maintainer scripts: its only
# action is to activate the update-initramfs trigger (initramfs-tools and dracut both
# answer it), so installing, upgrading or removing it never touches a running daemon.
# The same inputs give the same bytes (SOURCE_DATE_EPOCH, default: the last commit).
set -euo pipefail

[ $# -eq 3 ] || { echo "usage: $0 BINARY VERSION OUTDIR" >&2; exit 2; }
bin="$1" version="$2" out="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
distro="$(dirname "$here")"
repo="$(cd "$distro/../.." && pwd)"

case "$version" in
[0-9]*) ;;
*) echo "mkdeb: version $version must start with a digit (Debian policy)" >&2; exit 2 ;;
esac
[ -x "$bin" ] || { echo "mkdeb: $bin: not an executable" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "mkdeb: dpkg-deb missing (make deps)" >&2; exit 1; }
: "${SOURCE_DATE_EPOCH:=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
put() { # put MODE SRC DST
	install -D -m "$1" "$2" "$root$3"
}
put 0755 "$bin" /usr/sbin/isboot
# systemd-shutdown runs it once the root is read-only: the daemon flushes and sends a
# Logout instead of leaving the target a dropped connection.
mkdir -p "$root/usr/lib/systemd/system-shutdown"
ln -s ../../../sbin/isboot "$root/usr/lib/systemd/system-shutdown/isboot"
put 0755 "$distro/initramfs-tools/hooks/isboot" /usr/share/initramfs-tools/hooks/isboot
put 0755 "$distro/initramfs-tools/scripts/local-top/isboot" /usr/share/initramfs-tools/scripts/local-top/isboot
for f in "$distro"/dracut/95isboot/*; do
	put 0755 "$f" "/usr/lib/dracut/modules.d/95isboot/$(basename "$f")"
done
doc=/usr/share/doc/isboot
put 0644 "$repo/README.md" "$doc/README.md"
for f in "$repo"/docs/*.md; do
	put 0644 "$f" "$doc/$(basename "$f")"
done
put 0644 "$here/copyright" "$doc/copyright"

mkdir -p "$root/DEBIAN"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" "$here/control" > "$root/DEBIAN/control"
install -m 0644 "$here/triggers" "$root/DEBIAN/triggers"
(cd "$root" && find usr -type f | LC_ALL=C sort | xargs md5sum > DEBIAN/md5sums)
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb="$out/isboot_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
