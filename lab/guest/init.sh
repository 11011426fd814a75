#!/bin/sh
# /init of the lab guest initramfs (busybox sh).  As PID 1 it must never exit.
export PATH=/bin
set -f  # /proc/cmdline words are data, never globs

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The archive has no /dev/console node, so the kernel gave us no stdio.
exec </dev/console >/dev/console 2>&1

# arg KEY: value of KEY=VALUE on the kernel command line, empty if absent.
arg() {
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1="*) echo "${w#*=}"; return ;; esac
    done
}

# The builder wrote the modules in dependency order (virtio_pci, net, blk...).
while read -r m; do
    insmod "/lib/modules/$m" || echo "LAB-AGENT-ERROR insmod $m failed"
done </lib/modules/order

ip link set lo up
addr="$(arg lab.ip)"
if [ -n "$addr" ]; then
    # virtio_net probes asynchronously; give eth0 up to 5 s to appear.
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    if ip addr add "$addr" dev eth0 && ip link set eth0 up; then
        gw="$(arg lab.gw)"
        [ -n "$gw" ] && ip route add default via "$gw"
    else
        echo "LAB-AGENT-ERROR cannot configure eth0 with $addr"
    fi
fi

if [ "$(arg lab.probe)" = 1 ]; then
    # KVM probe: the agent prints READY and exits; then stop the VM at once.
    /agent
    poweroff -f
fi

# 2 MiB pages for the dirty-page oracle (64 MiB sweep + the hot set): physically contiguous, so
# the harness can read them from outside the guest (QMP pmemsave) while it is paused.
echo 34 > /proc/sys/vm/nr_hugepages

while :; do
    /agent
    echo "LAB-AGENT-ERROR agent exited with status $?, respawning"
    sleep 1
done
