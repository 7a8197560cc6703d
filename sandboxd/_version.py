"""
Provides sandboxd version information.
"""

# This file is auto-generated! Do not edit!
# Use `python -m incremental.update sandboxd` to change this file.

from incremental import Version

__version__ = Version("sandboxd", 0, 1, 0)
__all__ = ["__version__"]
