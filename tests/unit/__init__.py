"""Unit tests: no root, no sandbox tool, no daemon; the whole set runs in seconds (make unit)."""
