"""Makes ``twistd sandboxd`` exist; the real work is in sandboxd.service.tap."""

from twisted.application.service import ServiceMaker

sandboxd = ServiceMaker(
    "sandboxd",
    "sandboxd.service.tap",
    "Build and run untrusted Go programs in sandboxes, streamed as JSON lines",
    "sandboxd",
)
