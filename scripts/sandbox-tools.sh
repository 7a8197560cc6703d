#!/usr/bin/env bash
# Install what sandboxd needs from Debian, when it is missing: a Python that can make a virtual
# environment, goimports (golang-golang-x-tools), and a sandbox (isolate if present, else
# bubblewrap plus util-linux's setpriv and prlimit). As root on Debian, install; otherwise say
# exactly what is missing.
#   scripts/sandbox-tools.sh           what the daemon needs
#   scripts/sandbox-tools.sh --test    also what the test suite drives (socat, nc, openssl,
#                                        systemd-analyze, haproxy, headless chromium +
#                                        chromedriver; debootstrap where a container
#                                        engine answers)
set -euo pipefail
PYTHON=${PYTHON:-python3}
need=()
"$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# goimports for fmt requests with imports: where every box sees it (under /usr).
[ -x /usr/bin/goimports ] || [ -x /usr/local/bin/goimports ] || need+=(golang-golang-x-tools)
if ! command -v isolate >/dev/null 2>&1; then
  command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
  command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
  command -v prlimit >/dev/null 2>&1 || need+=(util-linux)
fi
if [ "${1:-}" = --test ]; then
  command -v socat >/dev/null 2>&1 || need+=(socat)
  # nc -N (shut down writing at end of input) is netcat-openbsd's; netcat-traditional lacks it.
  { command -v nc && nc -h 2>&1 | grep -qw -- "-N"; } >/dev/null 2>&1 || need+=(netcat-openbsd)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # verifies systemd/*.service
  command -v haproxy >/dev/null 2>&1 || need+=(haproxy)  # tests/system/test_cluster.py's balancer
  # The playground page's tests drive Debian's chromium through its chromedriver (selenium).
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  # The container test's local base image (only where a container engine answers).
  if bash "$(dirname "$0")/container-engine.sh" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  fi
fi
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "sandboxd: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "sandboxd: missing ${need[*]}." >&2
  echo "Install them (Debian: apt-get install ${need[*]}), then run make setup again." >&2
  exit 1
fi
