"""Go itself: toolchains and their standard-library warm, the box init, module proxies, test
detection and compiler diagnostics."""
