"""Names registered in an entry-point group, read from the installed metadata without importing
any plugin. The backends' group is read here, in the base layer, so that device profiles can check
backend names without importing the backends' layer above them."""

from __future__ import annotations

from importlib.metadata import entry_points

BACKENDS_GROUP = "edgerun.backends"


def entry_point_names(group: str) -> list[str]:
    """Names of every entry point in `group`, in registration order."""
    return [ep.name for ep in entry_points(group=group)]
