#!/bin/sh
# The container's entrypoint: make the cgroup filesystems writable, then exec twistd (PID 1,
# so `docker stop`'s SIGTERM reaches it). Docker mounts /sys/fs/cgroup read-only unless the
# container is --privileged; with CAP_SYS_ADMIN and --cgroupns=private a fresh mount of each
# hierarchy is writable and rooted at the container's own cgroup, so the daemon's cgroups stay
# inside the container's (and its limits). Without CAP_SYS_ADMIN this says so and the daemon
# falls back to rlimits (it logs which mechanisms it uses).
set -u
while read -r _ point type options _; do
    case "$type" in cgroup|cgroup2) ;; *) continue ;; esac
    case ",$options," in *,ro,*) ;; *) continue ;; esac
    rw=$(printf '%s' ",$options," | sed 's/,ro,/,rw,/; s/^,//; s/,$//')
    if ! { umount "$point" && mount -t "$type" -o "$rw" "$type" "$point"; } 2>/dev/null; then
        echo "sandboxd-entrypoint: $point stays read-only (no CAP_SYS_ADMIN?): no cgroups for the daemon" >&2
    fi
done < /proc/self/mounts
exec twistd -n --pidfile= --logfile=- sandboxd "$@"
