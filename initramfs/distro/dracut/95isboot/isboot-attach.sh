#!/bin/sh
# dracut initqueue job (isboot): attach the iSCSI boot LUN as /dev/nbd0. The daemon
# keeps serving it; dracut waits for root= as usual.
type warn >/dev/null 2>&1 || . /lib/dracut-lib.sh

# open-iscsi (dracut's iscsi module) logged in already: never attach the LUN twice.
for s in /sys/class/iscsi_session/session*; do
    if [ -e "$s" ]; then
        warn "isboot: open-iscsi has a session already; isboot stands down"
        exit 0
    fi
done

if ! /usr/sbin/isboot initramfs --host dracut; then
    warn "isboot: the iSCSI boot LUN is not attached (see the line above)"
    exit 1
fi

# isboot wins: dracut's iscsi module finds no iscsistart for this boot.
for f in /sbin/iscsistart /usr/sbin/iscsistart; do
    if [ -x "$f" ] && [ ! -L "$f" ]; then
        mv "$f" "$f.isboot-attached"
    fi
done
exit 0
