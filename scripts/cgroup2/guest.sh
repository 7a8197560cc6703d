#!/usr/bin/env bash
# Runs inside the cgroup-v2 guest (started by the image's sandboxd-rig.service, Delegate=yes),
# from /share (the host's /var/cache/sandboxd-cgroup2/share). Writes /share/rc; the unit then
# powers the guest off.
set -uo pipefail
. /share/env
echo 9 >/share/rc  # until the tests say otherwise
t0=$(date +%s)
for dir in "$CHECKOUT" "$VENV" "$WHEELS"; do
  mkdir -p "$dir" && mount -t hostfs -o "$dir" none "$dir" || { echo "cannot mount $dir"; exit 1; }
done
# The standard-library cache the host warmed, where the daemon looks by default.
mkdir -p /var/cache/sandboxd && mount -t hostfs -o "$GOCACHE_DIR" none /var/cache/sandboxd
# UML's modules (Debian's user-mode-linux ships them on the host): IPv6 is one, and the tests
# count on a box's own network having it. No kmod in the image: finit_module(2) directly.
mkdir -p /usr/lib/modules && mount -t hostfs -o /usr/lib/uml/modules none /usr/lib/modules
/usr/bin/python3 - "/usr/lib/modules/$(uname -r)/kernel" <<'PY'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for rel in ("lib/crc-ccitt.ko", "net/ipv6/ipv6.ko"):
    fd = os.open(os.path.join(sys.argv[1], rel), os.O_RDONLY)
    if libc.syscall(313, fd, b"", 0) != 0 and ctypes.get_errno() != 17:  # finit_module; EEXIST
        print(f"cannot load {rel}: {os.strerror(ctypes.get_errno())}")
PY
echo "kernel $(uname -r) ($(uname -m)), $(nproc) cpu, booted in $(cut -d' ' -f1 /proc/uptime) s"
echo "cgroup: $(stat -fc %T /sys/fs/cgroup) at /sys/fs/cgroup, controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "this job's cgroup: $(cut -d: -f3 /proc/self/cgroup)"
guest_python=$(/usr/bin/python3 -V)
if [ "$guest_python" != "$HOST_PYTHON" ]; then
  echo "the venv was made for $HOST_PYTHON, the guest has $guest_python"; exit 1
fi
if [ "$ISOLATE" = yes ]; then
  install -m 4755 /share/isolate /usr/local/bin/isolate
  # isolate --cg's cgroups under a cgroup made for it (no isolate-cg-keeper service here).
  mkdir -p /sys/fs/cgroup/isolate
  echo "+memory +pids +cpu" >/sys/fs/cgroup/cgroup.subtree_control
  echo "+memory +pids +cpu" >/sys/fs/cgroup/isolate/cgroup.subtree_control
  sed 's#^cg_root *=.*#cg_root = /sys/fs/cgroup/isolate#' /share/isolate.cf >/usr/local/etc/isolate
  echo "isolate: $(isolate --version | head -1), cg_root /sys/fs/cgroup/isolate"
else
  echo "isolate: not in the guest (it needs a local build at /opt/isolate/bin/isolate, and CGROUP2_ISOLATE not 0): --cgroups=isolate not tested"
fi
cd "$CHECKOUT"
export PYTHONDONTWRITEBYTECODE=1 SANDBOXD_GUEST=1 WHEELS SANDBOXD_TEST_DRIVERS="${DRIVERS:-bubblewrap}"
echo "pytest $TESTS (the general suites with: $SANDBOXD_TEST_DRIVERS)"
[ -z "$PYTEST_ARGS" ] || echo "not run here: $PYTEST_ARGS (timing under UML, see scripts/cgroup2/run.sh)"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pytest -q -p no:cacheprovider $PYTEST_ARGS $TESTS
rc=$?
echo "tests took $(( $(date +%s) - t0 )) s in the guest"
# What a test run must not leave: cgroups under this job's own, other than the leaf its
# processes were moved into.
left=$(find "/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup | sed 's#/supervisor$##')" -mindepth 1 -type d \
  ! -name supervisor 2>/dev/null)
if [ -n "$left" ]; then
  echo "cgroups left behind after the tests:"; echo "$left"
  [ "$rc" = 0 ] && rc=1
fi
echo "$rc" >/share/rc
