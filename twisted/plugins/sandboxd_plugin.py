"""Makes ``twistd sandboxd`` exist; the real work is in sandboxd.tap."""

from twisted.application.service import ServiceMaker

sandboxd = ServiceMaker(
    "sandboxd",
    "sandboxd.tap",
    "Build and run untrusted Go programs in sandboxes, streamed as JSON lines",
    "sandboxd",
)
