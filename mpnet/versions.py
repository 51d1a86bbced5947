"""The versions of the software that must match across a cluster."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

__all__ = ["get_versions", "DEFAULT_PACKAGES"]

DEFAULT_PACKAGES = ("mpnet", "cloudpickle", "msgpack")


def get_versions(packages: tuple[str, ...] = ()) -> dict:
    """``{"python": "3.11.7", "mpnet": "0.1.0", ...}`` for this process."""
    found = {"python": ".".join(map(str, sys.version_info[:3])),
             "platform": platform.platform(terse=True)}
    for name in DEFAULT_PACKAGES + tuple(packages):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            module = sys.modules.get(name)
            found[name] = getattr(module, "__version__", None)
    return found
