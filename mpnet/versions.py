"""The versions of the software that must match across a cluster."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

__all__ = ["get_versions", "DEFAULT_PACKAGES", "mismatches", "format_mismatches"]

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

# Packages whose difference matters; "platform" is informative only.
_IGNORED = {"platform"}


def mismatches(versions: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """``{package: {who: version}}`` for every package whose versions differ.

    ``versions`` maps a name ("scheduler", "client", a worker address) to what
    :func:`get_versions` returned there. A package missing on one side counts as None.
    """
    packages = {p for v in versions.values() for p in v} - _IGNORED
    out = {}
    for package in sorted(packages):
        seen = {who: v.get(package) for who, v in versions.items()}
        if len(set(map(str, seen.values()))) > 1:
            out[package] = seen
    return out


def format_mismatches(diff: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per package, one column per process."""
    if not diff:
        return ""
    who = sorted({w for seen in diff.values() for w in seen})
    rows = [["package", *who]] + [[p, *(str(diff[p].get(w)) for w in who)] for p in diff]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
