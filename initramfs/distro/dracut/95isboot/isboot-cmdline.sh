#!/bin/sh
# dracut cmdline hook (isboot): queue the attach when this machine boots from iSCSI.
# The job runs once udev has settled (NIC drivers loaded, interfaces named).
if why="$(/usr/sbin/isboot initramfs --check)"; then
    info "isboot: ${why#isboot: }: attaching the LUN from the initqueue"
    /sbin/initqueue --settled --onetime --unique --name isboot /sbin/isboot-attach
fi
