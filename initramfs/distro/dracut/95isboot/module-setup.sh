#!/bin/bash
# dracut module (isboot): on a machine booted from iSCSI (an iBFT, or netroot=iscsi:
# on the kernel command line), isboot attaches the LUN as /dev/nbd0 from the initqueue
# and leaves its daemon serving; dracut mounts root= and switches root as usual.
# isboot=off (or rd.isboot=0) leaves the boot to dracut's own iscsi module.

# Included whenever isboot is installed: it does nothing on a machine without an
# iBFT or netroot=iscsi:.
check() {
    require_binaries /usr/sbin/isboot || return 1
    return 0
}

depends() {
    return 0
}

installkernel() {
    # nbd carries the LUN even on a machine that does not use it yet (hostonly).
    hostonly='' instmods nbd crc32c crc32c_generic iscsi_ibft
    # The boot NIC's driver; in hostonly mode, the ones this machine has loaded.
    instmods =drivers/net/ethernet virtio_net virtio_pci
}

install() {
    inst /usr/sbin/isboot
    inst_hook cmdline 20 "$moddir/isboot-cmdline.sh"
    inst_script "$moddir/isboot-attach.sh" /sbin/isboot-attach
    dracut_need_initqueue
}
