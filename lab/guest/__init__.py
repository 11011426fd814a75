"""Lab guest: the boot image (kernel + busybox initramfs + static agent), domains, the agent client, probes."""
