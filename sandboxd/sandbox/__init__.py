"""The sandbox: the driver interface, bubblewrap and isolate, the child that owns one process
tree's life, cgroups, seccomp, the executable check and the kill-by-uid sweep."""
