#!/usr/bin/env bash
# Make sure a sandbox can run here: isolate, or else bubblewrap plus util-linux's setpriv and
# prlimit. As root on Debian, install what is missing; otherwise say exactly what is missing.
set -euo pipefail
need=()
command -v isolate >/dev/null 2>&1 && exit 0
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v prlimit >/dev/null 2>&1 || need+=(util-linux)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "sandboxd: installing ${need[*]} (no isolate, no bubblewrap found)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "sandboxd: neither isolate nor bubblewrap is usable. Missing: ${need[*]}." >&2
  echo "Install them (Debian: apt-get install ${need[*]}) or install isolate, then run make setup again." >&2
  exit 1
fi
