"""A device profile's export preferences turned into an export plan.

A profile says which formats its device runs best (`preferred_formats`, in order) and how to
quantize for it (`[export]`: block_size, accuracy_level, symmetric, builder). `plan()` turns that
into the formats to make and the ExportOptions fields to set, with a reason for each, so
`edgerun export SRC --profile raspberry-pi-5` (or `--profile detect`) can say why it made what it
made. What the caller set explicitly wins over the profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgerun.core.errors import EdgerunError

# The profile's [export] keys, each an ExportOptions field of the same name.
EXPORT_KEYS = ("block_size", "accuracy_level", "symmetric", "builder")


@dataclass(frozen=True)
class Plan:
    """What a profile asks of an export: formats, option values, and why."""

    profile_id: str
    formats: list[str]
    settings: dict[str, Any]
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile_id,
            "formats": self.formats,
            "settings": self.settings,
            "reasons": self.reasons,
        }


def resolve(spec: str) -> tuple[Any, str]:
    """(Profile, how it was chosen) for an id, a TOML path, or "detect" (this machine), as
    `edgerun run` resolves its --profile."""
    from edgerun.device.resolve import resolve_profile

    resolved = resolve_profile(None if spec == "detect" else spec)
    return resolved.profile, resolved.reason


def plan(spec: str, formats: list[str] | None, explicit: set[str]) -> Plan:
    """The export plan of profile `spec`. `formats`: the caller's formats (None: the profile's
    preferred formats this install offers); `explicit`: ExportOptions fields the caller set,
    which the profile's [export] does not override. EdgerunError when the profile prefers no
    format this install can make."""
    from edgerun.exporters.formats import all_formats

    profile, how = resolve(spec)
    reasons = [f"profile {profile.id} ({how})"]
    if formats is None:
        offered = set(all_formats())
        formats = [f for f in profile.preferred_formats if f in offered]
        skipped = [f for f in profile.preferred_formats if f not in offered]
        if not formats:
            raise EdgerunError(
                f"profile {profile.id} prefers {', '.join(profile.preferred_formats) or 'no format'},"
                " none of which this install can make",
                "pass -f FORMATS, or install the extra the format needs (edgerun export --list)",
            )
        reasons.append(f"formats {', '.join(formats)}: the profile's preferred_formats")
        if skipped:
            reasons.append(f"skipped {', '.join(skipped)}: not offered by this install")
    else:
        reasons.append(f"formats {', '.join(formats)}: given with -f")
    settings = {
        key: profile.export[key]
        for key in EXPORT_KEYS
        if key in profile.export and key not in explicit
    }
    if settings:
        shown = ", ".join(f"{k} {v}" for k, v in settings.items())
        reasons.append(f"{shown}: the profile's [export]")
    kept = sorted(k for k in EXPORT_KEYS if k in profile.export and k in explicit)
    if kept:
        reasons.append(f"{', '.join(kept)}: given on the command line, not the profile's")
    return Plan(profile.id, formats, settings, reasons)
