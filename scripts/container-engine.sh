#!/usr/bin/env bash
# Prints the container engine command that answers (docker: a running dockerd; podman: rootful)
# and can build with BuildKit (the Dockerfile's RUN --mount), trying $CONTAINER_ENGINE when set,
# else docker on PATH, Debian's /usr/bin/docker, then podman. Exits 1 with one line on stderr
# when there is none. Whether the engine can also *run* a container is the test's business.
set -uo pipefail

buildkit() {  # docker ≥ 23 needs the buildx plugin; 20.10 has BuildKit built in (DOCKER_BUILDKIT=1)
    case "$(basename "$1")" in
        docker*)
            "$1" buildx version >/dev/null 2>&1 && return 0
            major=$("$1" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
            [ -n "$major" ] && [ "$major" -lt 23 ] ;;
        *) return 0 ;;
    esac
}

tried=()
for engine in ${CONTAINER_ENGINE:-docker /usr/bin/docker podman}; do
    path=$(command -v "$engine") || continue
    tried+=("$path")
    if "$path" info >/dev/null 2>&1 && buildkit "$path"; then
        echo "$path"
        exit 0
    fi
done
echo "no container engine answers with BuildKit (tried: ${tried[*]:-none installed}; docker needs a running dockerd, and docker >= 23 its buildx plugin)" >&2
exit 1
