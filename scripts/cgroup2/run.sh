#!/usr/bin/env bash
# make test-cgroup2: the cgroup-dependent system tests in a cgroup-v2 Linux made from Debian
# packages only, booted with Debian's user-mode-linux (no KVM needed).
#   scripts/cgroup2/run.sh          build what is missing (cached), boot, test, report
#   scripts/cgroup2/run.sh --can    exit 0 if this machine can run it, else say why (exit 1)
# Cached under /var/cache/sandboxd-cgroup2 (outside the checkout): image-<hash of image.sh>/
# (the guest's root file system), venv-<hash>/ (this checkout's environment for the guest's
# python3.11, editable), gocache/ (a standard-library cache warmed on the host: inside
# UML it takes more than 11 minutes), wheels-<hash>/ (for the guest's offline plain pip install).
# The guest has no network: it reads the checkout, the venv and the cache through hostfs at the
# same paths as on the host, and writes its log and exit code to share/. The guest's disk is a
# copy-on-write layer over the cached image, removed after each run.
set -euo pipefail
# All of it in one function: bash has then read the whole file before running any of it.
main() {
checkout=$(cd "$(dirname "$0")/../.." && pwd)
cache=/var/cache/sandboxd-cgroup2   # fixed: the image's rig unit mounts $cache/share
timeout_s=${CGROUP2_TIMEOUT:-1800}   # the whole guest run; the guest is killed after it
mem=${CGROUP2_MEM:-3G}
say() { echo "cgroup2: $*"; }

why_not() {
  [ "$(id -u)" = 0 ] || { echo "needs root (debootstrap, and the guest's files as root)"; return; }
  [ "$(uname -m)" = x86_64 ] || { echo "user-mode-linux here is x86_64 only"; return; }
  if ! command -v linux.uml >/dev/null; then
    command -v apt-get >/dev/null || { echo "no linux.uml (Debian's user-mode-linux) and no apt-get"; return; }
  fi
  for tool in debootstrap mke2fs; do
    command -v "$tool" >/dev/null || command -v apt-get >/dev/null || { echo "no $tool"; return; }
  done
  [ -e /dev/shm ] && [ -w /dev/shm ] || { echo "UML needs a writable /dev/shm"; return; }
}
reason=$(why_not)
if [ "${1:-}" = --can ]; then
  [ -z "$reason" ] && exit 0
  echo "$reason"; exit 1
fi
[ -z "$reason" ] || { echo "cgroup2: cannot run here: $reason" >&2; exit 2; }
need=()
command -v linux.uml >/dev/null || need+=(user-mode-linux)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$cache"
exec 9>"$cache/lock"
flock -n 9 || { say "another run holds $cache/lock; waiting"; flock -w "$timeout_s" 9; }
started=$(date +%s)
since() { echo $(( $(date +%s) - $1 )); }

# 1. The image: Debian packages only; rebuilt when image.sh changes.
key=$(sha256sum "$checkout/scripts/cgroup2/image.sh" | cut -c1-16)
image=$cache/image-$key
if [ ! -f "$image/root.img" ]; then
  t=$(date +%s)
  say "building the guest image (once per recipe; a few minutes)"
  rm -rf "$cache"/image-* 
  bash "$checkout/scripts/cgroup2/image.sh" "$image.tmp"
  mv "$image.tmp" "$image"
  say "image built in $(since "$t") s"
fi

# 2. The environment: a venv of this checkout (editable, so the guest tests the working tree)
# for the guest's python, and a standard-library cache warmed for its toolchain.
# Debian's python3 (the guest's is the same package), not whatever python3 is first on PATH.
py=/usr/bin/python3
[ -x "$py" ] || { echo "cgroup2: needs Debian's $py (apt-get install python3 python3-venv)" >&2; exit 2; }
pykey=$( { cat "$checkout/setup.cfg" "$checkout/pyproject.toml"; "$py" -VV; echo "$checkout"; } | sha256sum | cut -c1-16)
# The Go cache is keyed by sandboxd itself (go-<toolchain>, std-<toolchain>): one for all venvs.
venv=$cache/venv-$pykey gocache=$cache/gocache wheels=$cache/wheels-$pykey
if [ ! -f "$venv/.ready" ]; then
  t=$(date +%s)
  say "making the guest's venv (once per setup.cfg; ~1 min)"
  rm -rf "$cache"/venv-* "$cache"/wheels-* "$cache/warm-state"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e "$checkout[test]"
  # mke2fs -d and hostfs keep whole seconds of a file's times; Go's cache keys on them.
  goroot=$("$venv/bin/python" -c 'from sandboxd.golang import toolchain; print(toolchain.find_goroot(None))')
  "$venv/bin/python" - "$goroot" <<'PY'
import os, sys
for top, dirs, files in os.walk(sys.argv[1]):
    for name in dirs + files:
        p = os.path.join(top, name)
        st = os.lstat(p)
        os.utime(p, ns=(st.st_atime_ns // 10**9 * 10**9, st.st_mtime_ns // 10**9 * 10**9), follow_symlinks=False)
PY
  # Wheels of every dependency, for the guest's offline `pip install <checkout>` (the README's).
  "$venv/bin/pip" wheel -q -w "$wheels" "$checkout" setuptools wheel incremental pip
  rm -f "$wheels"/sandboxd-*.whl
  touch "$venv/.ready"
  say "venv ready in $(since "$t") s"
fi
# Every run: a no-op (about a second) unless this checkout's toolchain code wants another cache.
mkdir -p "$gocache"
"$venv/bin/sandboxd-warm" --sandbox=bubblewrap --cache-dir="$gocache" --state-dir="$cache/warm-state"
rm -rf "$cache/warm-state"

# 3. What the guest runs this time.
share=$cache/share
rm -rf "$share"
mkdir -p "$share"
cp "$checkout/scripts/cgroup2/guest.sh" "$share/"
git -C "$checkout" ls-files -co --exclude-standard -z | (cd "$checkout" && tar --null -T - -cf "$share/src.tar")
isolate_bin=""
# The isolate driver too when the host has a locally built isolate at /opt/isolate/bin (see
# docs/operations.md; built on bookworm, it runs on the guest's libraries; nothing here builds
# it): CGROUP2_ISOLATE=1 (the default) for the guest's own isolate tests (tests/guest: the
# driver and --cgroups=isolate on v2), the general suites with bubblewrap (and --cgroups=off);
# CGROUP2_ISOLATE=all: the general suites with isolate as well (about 70% more time);
# CGROUP2_ISOLATE=0: no isolate.
drivers=bubblewrap
if [ "${CGROUP2_ISOLATE:-1}" != 0 ] && [ -x /opt/isolate/bin/isolate ] && [ -f /usr/local/etc/isolate ]; then
  isolate_bin=/opt/isolate/bin/isolate
  [ "${CGROUP2_ISOLATE:-1}" != all ] || drivers=bubblewrap,isolate
  cp /opt/isolate/bin/isolate "$share/isolate"
  cp /usr/local/etc/isolate "$share/isolate.cf"
  # The isolate driver's box init, compiled on the host too (the guest's cache is the same).
  PATH=/opt/isolate/bin:$PATH "$venv/bin/sandboxd-warm" --sandbox=isolate --cache-dir="$gocache" \
    --state-dir="$cache/warm-state"
  rm -rf "$cache/warm-state"
fi
# Not run in the guest, and why (timing under UML's slow process creation, not cgroups; each
# passes on the host and the reason is printed with the results):
#   test_nothing_is_shared_between_sessions_or_anonymous_requests: its daemon's sessions idle
#   out after 3 s, and under UML the requests between the writer and its session's next
#   request take longer, so that request gets a fresh box.
deselect="--deselect=tests/system/test_hostile.py::test_nothing_is_shared_between_sessions_or_anonymous_requests"
cat >"$share/env" <<ENV
CHECKOUT=$checkout
VENV=$venv
GOCACHE_DIR=$gocache
WHEELS=$wheels
HOST_PYTHON="$("$py" -V)"
ISOLATE=${isolate_bin:+yes}
DRIVERS=$drivers
TESTS="${CGROUP2_TESTS:-tests/unit/test_cgroup_files.py tests/unit/test_limits.py tests/system/test_nocgroup.py tests/system/test_operations.py tests/system/test_hostile.py tests/guest}"
PYTEST_ARGS="${CGROUP2_PYTEST_ARGS-$deselect}"
ENV
: >"$share/guest.log"

# 4. Boot, follow the guest's log, and kill the guest if it outlives the timeout.
cow=$cache/run.cow
rm -f "$cow"
mkdir -p "$cache/uml"
say "booting the guest (user-mode-linux, cgroup v2, mem=$mem; timeout ${timeout_s} s)"
boot=$(date +%s)
setsid linux.uml ubd0="$cow,$image/root.img" root=/dev/ubda rw mem="$mem" \
  umid=sandboxd-cgroup2 uml_dir="$cache/uml" con=null con0=null,fd:1 \
  systemd.unified_cgroup_hierarchy=1 systemd.show_status=0 quiet \
  </dev/null >"$share/console.log" 2>&1 &
uml=$!
tail -n +1 -F "$share/guest.log" 2>/dev/null | sed -u 's/^/guest: /' &
tailer=$!
cleanup() {
  kill -KILL -- "-$uml" 2>/dev/null || true
  kill "$tailer" 2>/dev/null || true
  rm -f "$cow"
  rm -rf "$cache/uml/sandboxd-cgroup2"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
timed_out=""
while kill -0 "$uml" 2>/dev/null; do
  if [ "$(since "$boot")" -ge "$timeout_s" ]; then
    timed_out=yes
    say "TIMEOUT: the guest ran ${timeout_s} s; killing it"
    kill -KILL -- "-$uml" 2>/dev/null || true
    break
  fi
  sleep 2
done
wait "$uml" 2>/dev/null || true
sleep 1
rc=$(cat "$share/rc" 2>/dev/null || echo "")
say "guest ran $(since "$boot") s; whole run $(since "$started") s"
if [ -n "$timed_out" ]; then exit 124; fi
if [ -z "$rc" ]; then
  say "FAILED: the guest wrote no result; its console:"
  tail -30 "$share/console.log"
  exit 1
fi
exit "$rc"
}
main "$@"
