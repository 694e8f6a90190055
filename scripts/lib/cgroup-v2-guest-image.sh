#!/usr/bin/env bash
# Builds the cgroup v2 guest's disk and boot files, cached in the directory given as $1:
#
#   root.img        ext4 root file system: Debian bookworm (systemd, python3, btrfs-progs) from mmdebstrap
#   vmlinuz         Debian's cloud kernel, taken from the root (never installed on the host)
#   initrd.img      a small initramfs of initramfs-tools with just the modules that mount the root (virtio, ext4)
#   stamp           what the cache was built from; a different recipe rebuilds it
#
# Called by scripts/cgroup-v2-guest.sh; needs root (mmdebstrap into a directory, mke2fs -d).
set -euo pipefail

out=$1
suite=bookworm
mirror=${AGENTBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=(
    linux-image-cloud-amd64 initramfs-tools zstd # the kernel and its initramfs
    systemd systemd-sysv dbus                    # the second boot runs the tests as a systemd service
    python3 nodejs bash coreutils procps util-linux kmod # what sandboxes and the tests run
    btrfs-progs e2fsprogs iproute2
)
# Bump when the recipe changes: the cache is rebuilt when the stamp differs.
# The root's /sbin/agentbox-guest-boot: the guest's first process (init=). It mounts the per-run work disk
# (/dev/vdb: test binaries, the guest side of the run, and where results go) and hands over to its init,
# so changing what runs in the guest never rebuilds this cache.
boot='#!/bin/sh
mount -t proc proc /proc 2>/dev/null
mkdir -p /work
if ! mount -t ext4 /dev/vdb /work; then
    echo "agentbox-guest: cannot mount the work disk /dev/vdb" >/dev/console
    echo 1 >/proc/sys/kernel/sysrq; echo o >/proc/sysrq-trigger
fi
exec /work/guest-init
'
recipe="v2 $suite ${packages[*]} $(echo "$boot" | md5sum | cut -c1-12)"

if [[ -f "$out/stamp" && "$(cat "$out/stamp")" == "$recipe" && -f "$out/root.img" && -f "$out/vmlinuz" && -f "$out/initrd.img" ]]; then
    echo "cached guest image in $out"
    exit 0
fi

mkdir -p "$out"
rm -f "$out/stamp" "$out/root.img" "$out/vmlinuz" "$out/initrd.img"
rootdir="$out/rootfs"
rm -rf "$rootdir"
echo "building the guest root with mmdebstrap ($suite from $mirror) into $rootdir"
# The initramfs only has to find the root disk: a module list, not every driver of the kernel.
mmdebstrap --variant=apt --quiet \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"' \
    --setup-hook='echo MODULES=list > "$1/etc/initramfs-tools/conf.d/agentbox.conf"' \
    --setup-hook='printf "%s\n" virtio_pci virtio_blk virtio_console ext4 > "$1/etc/initramfs-tools/modules"' \
    --customize-hook='echo agentbox-guest > "$1/etc/hostname"' \
    --customize-hook='passwd --root "$1" -d root' \
    --customize-hook='printf "%s\n" "/dev/vda / ext4 rw,errors=remount-ro 0 1" > "$1/etc/fstab"' \
    --customize-hook='rm -rf "$1/var/cache/apt/archives"/*.deb "$1/var/lib/apt/lists"/*' \
    "$suite" "$rootdir" "$mirror"

printf '%s' "$boot" > "$rootdir/sbin/agentbox-guest-boot"
chmod 755 "$rootdir/sbin/agentbox-guest-boot"
cp "$(ls "$rootdir"/boot/vmlinuz-* | sort -V | tail -n1)" "$out/vmlinuz"
cp "$(ls "$rootdir"/boot/initrd.img-* | sort -V | tail -n1)" "$out/initrd.img"
# 3 GiB, sparse: room for what the tests write (qemu runs it with -snapshot, so the cache stays pristine).
mke2fs -q -t ext4 -L agentbox-root -d "$rootdir" "$out/root.img" 3G
rm -rf "$rootdir"
echo "$recipe" > "$out/stamp"
echo "guest image ready: $(du -sh --apparent-size "$out/root.img" | cut -f1) root, kernel $(file -b "$out/vmlinuz" | grep -o 'version [^ ]*' || true)"
