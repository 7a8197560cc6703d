#!/usr/bin/env bash
# A local Debian base image for the Dockerfile, from Debian packages alone (no image registry):
# debootstrap a minimal Debian into a cache directory outside the checkout, then import it into
# the container engine as sandboxd-base:SUITE. Idempotent: nothing is done when the image exists,
# and the debootstrap tree is reused when it finished before.
#
#   scripts/make-base-image.sh [docker|podman]      (default: whichever runs a container)
#
# Environment: SUITE (bookworm), MIRROR (the host's Debian mirror, deb.debian.org),
# BASE_CACHE (/var/cache/sandboxd-image). Needs root and the `debootstrap` package.
set -euo pipefail

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE_CACHE=${BASE_CACHE:-/var/cache/sandboxd-image}
IMAGE=sandboxd-base:$SUITE
ENGINE=${1:-$(bash "$(dirname "$0")/container-engine.sh")}

say() { printf 'make-base-image: %s\n' "$*" >&2; }

if "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE already in $ENGINE"
    exit 0
fi
command -v debootstrap >/dev/null || { say "debootstrap is missing: apt-get install debootstrap"; exit 1; }
[ "$(id -u)" = 0 ] || { say "debootstrap needs root"; exit 1; }

root=$BASE_CACHE/$SUITE
if [ ! -e "$root/.complete" ]; then
    say "debootstrap $SUITE into $root (a few minutes; progress below)"
    rm -rf "$root"
    mkdir -p "$BASE_CACHE"
    debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" \
        | grep --line-buffered -E '^I: (Retrieving Release|Validating Packages|Installing core|Unpacking the base|Configuring the base|Base system installed)' >&2 || true
    [ -x "$root/usr/bin/apt-get" ] || { say "debootstrap failed (no apt-get in $root)"; exit 1; }
    # What the official debian:*-slim images carry: the suite's own security and update archives.
    printf '%s\n' 'Types: deb' "URIs: $MIRROR" "Suites: $SUITE $SUITE-updates" 'Components: main' \
        'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' '' \
        'Types: deb' "URIs: ${MIRROR%/debian}/debian-security" "Suites: $SUITE-security" \
        'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
        > "$root/etc/apt/sources.list.d/debian.sources"
    rm -f "$root/etc/apt/sources.list"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    touch "$root/.complete"
fi

say "importing $root as $IMAGE into $ENGINE"
tar --exclude=./.complete -C "$root" -c . | "$ENGINE" import - "$IMAGE" >/dev/null
say "$IMAGE ready"
