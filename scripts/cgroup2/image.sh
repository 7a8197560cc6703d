#!/usr/bin/env bash
# Build the cgroup-v2 guest's root file system image from Debian packages only (run as root on
# the host, with network access to deb.debian.org; nothing here runs inside the guest).
#   scripts/cgroup2/image.sh OUT_DIR
# Leaves OUT_DIR/root.img (ext4, made by mke2fs -d without a loop mount). The guest's kernel is
# Debian's user-mode-linux (linux.uml on the host), so no linux-image package is needed inside.
# run.sh keys its cache on this file's contents: any change here rebuilds the image.
set -euo pipefail
out=$1
mirror=http://deb.debian.org/debian
# What the guest runs: systemd as PID 1 (cgroup v2, Delegate=), Python for the tests and the
# daemon, bubblewrap + util-linux for the bubblewrap driver, the test suite's client tools, and
# isolate's run-time libraries (a locally built isolate is used when the host has one).
packages=systemd-sysv,dbus,python3,python3-venv,bubblewrap,util-linux,procps,socat,netcat-openbsd,openssl,libcap2,libseccomp2,libsystemd0,ca-certificates
root=$out/rootfs
rm -rf "$root" "$out/root.img"
mkdir -p "$out/debs" "$root"
echo "cgroup2 rig: debootstrap bookworm (a few minutes)"
debootstrap --variant=minbase --include="$packages" --cache-dir="$out/debs" bookworm "$root" "$mirror" \
  >"$out/debootstrap.log" 2>&1 || { tail -20 "$out/debootstrap.log"; exit 1; }
# Same point releases as the host (bookworm-updates, security): the host-made venv uses the
# guest's python3.11.
cat >"$root/etc/apt/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
cp /etc/resolv.conf "$root/etc/resolv.conf"
echo "cgroup2 rig: apt-get upgrade in the image"
chroot "$root" sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get -y -qq upgrade && apt-get clean' \
  >>"$out/debootstrap.log" 2>&1 || { tail -20 "$out/debootstrap.log"; exit 1; }
rm -f "$root/etc/resolv.conf"
echo sandboxd-guest >"$root/etc/hostname"
# Root from the kernel command line (rw); the shared host directory from run.sh's unit below.
: >"$root/etc/fstab"
# isolate's user (as its Debian package makes it), with subuids away from the test harness's box uids.
chroot "$root" sh -c 'addgroup --system isolate >/dev/null && adduser --system --disabled-login --ingroup isolate --home /nonexistent --no-create-home --shell /bin/false isolate >/dev/null'
echo isolate:300000:65536 >"$root/etc/subuid"
echo isolate:300000:65536 >"$root/etc/subgid"
mkdir -p "$root/var/local/lib/isolate" "$root/share"
# The guest does one thing: run.sh's job, then power off. Nothing else that slows a boot.
cat >"$root/etc/systemd/system/sandboxd-rig.service" <<'UNIT'
[Unit]
Description=sandboxd cgroup-v2 rig: the job the host shared in /share
After=local-fs.target
[Service]
Type=oneshot
ExecStartPre=/bin/mount -t hostfs -o /var/cache/sandboxd-cgroup2/share none /share
ExecStart=/bin/sh -c 'exec /bin/bash /share/guest.sh >>/share/guest.log 2>&1'
TimeoutStartSec=infinity
Delegate=yes
ExecStopPost=/bin/systemctl --no-block poweroff
UNIT
ln -s /etc/systemd/system/sandboxd-rig.service "$root/etc/systemd/system/multi-user.target.wants/sandboxd-rig.service"
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer systemd-timesyncd.service \
    getty@tty1.service serial-getty@ttyS0.service console-getty.service systemd-networkd.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
echo "cgroup2 rig: mke2fs -d (image of $(du -sh "$root" | cut -f1))"
mke2fs -q -t ext4 -d "$root" "$out/root.img" 6G
rm -rf "$root"
