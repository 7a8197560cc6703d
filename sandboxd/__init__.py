"""sandboxd: build and run untrusted Go programs in sandboxes, streamed as JSON lines."""

from sandboxd._version import __version__

__all__ = ["__version__"]
