"""Backends are plugins: the built-in ones register through the entry-point group
"edgerun.backends" in pyproject.toml, exactly as a third-party package would:

    [project.entry-points."edgerun.backends"]
    mybackend = "my_package.backend:MyBackend"
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points

from edgerun.backends.base import Artifact, Backend
from edgerun.core.errors import EdgerunError, MissingExtraError
from edgerun.core.plugins import BACKENDS_GROUP as GROUP
from edgerun.core.plugins import entry_point_names


def backend_names() -> list[str]:
    """Names of every registered backend, in registration order."""
    return entry_point_names(GROUP)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as `name`; EdgerunError listing the known names otherwise."""
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Backend)):
                raise EdgerunError(
                    f"entry point {ep.value} for backend '{name}' is not a Backend subclass",
                    "fix or uninstall the package that registers it",
                )
            return cls
    known = backend_names()
    raise EdgerunError(
        f"unknown backend '{name}'",
        f"known backends: {', '.join(known)}"
        if known
        else "no backends are registered: reinstall edgerun (pip install -e .)",
    )


def is_installed(cls: type[Backend]) -> bool:
    """Whether the optional library the backend needs can be imported."""
    return cls.requires is None or importlib.util.find_spec(cls.requires[0]) is not None


def require_installed(cls: type[Backend]) -> None:
    """Raise MissingExtraError when the backend's library is missing."""
    if cls.requires is not None and not is_installed(cls):
        raise MissingExtraError(*cls.requires)


def backends_for(artifact: Artifact) -> list[type[Backend]]:
    """Registered backends that accept `artifact`, in registration order."""
    return [cls for cls in map(get_backend, backend_names()) if cls.accepts(artifact)]
