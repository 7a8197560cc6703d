"""The isolate test runs when the guest has isolate (``CGROUP2_ISOLATE=1 make test-cgroup2``
with a locally built isolate on the host); otherwise it is not collected, and guest.sh says so."""

from __future__ import annotations

import shutil

collect_ignore = [] if shutil.which("isolate") else ["test_isolate_cg.py"]
