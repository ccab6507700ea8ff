"""The device profile a run uses: the one named, or the best match for this machine."""

from __future__ import annotations

from pathlib import Path

from edgerun.device.detect import detect
from edgerun.device.profile import Profile, get_profile

# A profile as resolved for one run, with why: resolved once at the edge (edgerun.load) and
# passed down, so that one load detects the machine once.
Resolved = tuple[Profile | None, str]


def resolve_profile(profile: str | Path | None) -> Resolved:
    """(profile, why): the named one, or the best match for this machine."""
    if profile is not None:
        return get_profile(str(profile)), "chosen with --profile"
    found = detect()
    why = "; ".join(found.reasons) or f"best match (score {found.score})"
    return found.profile, f"auto-detected: {why}"
