"""Boxes: a box's numbers and directories, the pool with its fair slots, a box's filesystem
(hostfs, its /etc)."""
