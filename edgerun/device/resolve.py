"""The device profile a run uses: the one named, or the best match for this machine."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from edgerun.device.detect import Detection, detect
from edgerun.device.profile import Profile, get_profile


class Resolved(NamedTuple):
    """A profile as resolved for one run, with why: resolved once at the edge (edgerun.load, the
    bench parent) and passed down, so that one load, or one bench run with all its workers,
    detects the machine once. `detection`: the detection that chose it (None: named, or resolved
    by another process)."""

    profile: Profile | None
    reason: str
    detection: Detection | None = None


def resolve_profile(profile: str | Path | Resolved | None) -> Resolved:
    """The named profile, or the best match for this machine, with why; one already resolved is
    returned as it is."""
    if isinstance(profile, Resolved):
        return profile
    if profile is not None:
        return Resolved(get_profile(str(profile)), "chosen with --profile")
    found = detect()
    why = "; ".join(found.reasons) or f"best match (score {found.score})"
    return Resolved(found.profile, f"auto-detected: {why}", found)
