"""The package a plain (non-editable) ``pip install`` makes carries Twisted's plugin.

``twisted/plugins`` has no ``__init__.py`` (Twisted's rule), so setuptools' ``find:`` drops it
and ``twistd`` then knows no ``sandboxd`` (the systemd unit looped on ``Usage: twistd``).  The
full check, a real ``pip install`` of the checkout started by systemd, runs in the cgroup-v2
guest (``make test-cgroup2``, tests/guest/test_systemd_units.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools.config.setupcfg import read_configuration

ROOT = Path(__file__).resolve().parents[2]


def test_setup_cfg_packages_include_the_twisted_plugin():
    cwd = os.getcwd()
    os.chdir(ROOT)  # find_namespace: looks relative to the working directory
    try:
        options = read_configuration(ROOT / "setup.cfg")["options"]
    finally:
        os.chdir(cwd)
    packages = set(options["packages"])
    assert "twisted.plugins" in packages and "sandboxd.sandbox" in packages, packages
    ours = ("sandboxd", "twisted.plugins")
    assert not {p for p in packages if "__pycache__" in p or not p.startswith(ours)}
    assert "sandboxd_plugin.py" in options["package_data"]["twisted.plugins"]
    assert (ROOT / "twisted" / "plugins" / "sandboxd_plugin.py").is_file()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "__init__.py").exists()
