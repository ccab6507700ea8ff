"""Which device profile fits this machine best, and why?

:func:`detect` scores every profile's ``[match]`` rules against :class:`MachineFacts` (see
edgerun.device.machine): a rule that fails rules the profile out and says why; each rule that holds adds
its weight (``WEIGHTS``), so the most specific matching profile wins, with its reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgerun.core.errors import EdgerunError
from edgerun.device.machine import MachineFacts, machine_facts, parse_cpuinfo, parse_jetson_release
from edgerun.device.profile import MatchRules, Profile, list_profiles

__all__ = [
    "Detection",
    "MachineFacts",
    "detect",
    "machine_facts",
    "parse_cpuinfo",
    "parse_jetson_release",
    "score_profile",
]

# Points per rule that holds: device-specific evidence (device tree, Jetson, GPU) weighs most.
WEIGHTS = {
    "arch": 1,
    "os": 1,
    "cpu_flag": 2,
    "cpu_model": 3,
    "providers": 4,
    "gpus": 8,
    "device_tree": 10,
    "jetson": 10,
    # a profile `edgerun tune` measured on this very machine beats any hand-written one
    "tuned": 50,
}


@dataclass(frozen=True)
class Detection:
    """The winning profile, its score and reasons; every matching profile ranked best first;
    and every ruled-out profile with the rule that failed."""

    profile: Profile
    score: int
    reasons: list[str]
    ranking: list[tuple[Profile, int, list[str]]]
    rejected: list[tuple[Profile, str]] = field(default_factory=list)


class _Mismatch(Exception):
    """A match rule that does not hold; the message says why."""


_Hit = tuple[int, str] | None  # (points, reason), or None when the profile does not set the rule


def _arch(rules: MatchRules, facts: MachineFacts) -> _Hit:
    if facts.arch not in rules.arch:
        raise _Mismatch(f"architecture {facts.arch or '?'} is not {' / '.join(rules.arch)}")
    return WEIGHTS["arch"], f"architecture {facts.arch}"


def _os(rules: MatchRules, facts: MachineFacts) -> _Hit:
    if not rules.os:
        return None
    if facts.os not in rules.os:
        raise _Mismatch(f"OS {facts.os or '?'} is not {' / '.join(rules.os)}")
    return WEIGHTS["os"], f"OS {facts.os}"


def _jetson(rules: MatchRules, facts: MachineFacts) -> _Hit:
    if rules.jetson is None:
        return None
    if rules.jetson != (facts.jetson_release is not None):
        raise _Mismatch("no /etc/nv_tegra_release" if rules.jetson else "this is a Jetson")
    if not rules.jetson:
        return None
    return WEIGHTS["jetson"], f"Jetson Linux {facts.jetson_release} (/etc/nv_tegra_release)"


def _cpu_flags(rules: MatchRules, facts: MachineFacts) -> _Hit:
    missing = [f for f in rules.cpu_flags if f not in facts.cpu_flags]
    if missing:
        raise _Mismatch(f"CPU lacks {', '.join(missing)}")
    if not rules.cpu_flags:
        return None
    return WEIGHTS["cpu_flag"] * len(rules.cpu_flags), f"CPU flags {', '.join(rules.cpu_flags)}"


def _substring(rule: str, label: str, needles: list[str], hays: list[str]) -> _Hit:
    """Any needle, case-insensitively, inside any of the machine's strings."""
    if not needles:
        return None
    hays = [h for h in hays if h]
    for hay in hays:
        for needle in needles:
            if needle.lower() in hay.lower():
                return WEIGHTS[rule], f"{label} '{hay}' matches '{needle}'"
    have = ", ".join(repr(h) for h in hays) or "none"
    raise _Mismatch(f"no {label} matches {' / '.join(needles)} (have: {have})")


def _cpu_model(rules: MatchRules, facts: MachineFacts) -> _Hit:
    return _substring("cpu_model", "CPU model", rules.cpu_model, [facts.cpu_model])


def _device_tree(rules: MatchRules, facts: MachineFacts) -> _Hit:
    model = facts.device_tree_model or ""
    return _substring("device_tree", "device-tree model", rules.device_tree, [model])


def _gpus(rules: MatchRules, facts: MachineFacts) -> _Hit:
    return _substring("gpus", "GPU", rules.gpus, facts.gpus)


def _providers(rules: MatchRules, facts: MachineFacts) -> _Hit:
    lacking = [p for p in rules.providers if p not in facts.ort_providers]
    if lacking:
        raise _Mismatch(f"onnxruntime lacks {', '.join(lacking)}")
    if not rules.providers:
        return None
    return WEIGHTS["providers"], f"onnxruntime has {', '.join(rules.providers)}"


def _tuned(profile: Profile, facts: MachineFacts) -> _Hit:
    """A tuned profile holds on the machine it was tuned on: same CPU model and core count."""
    tuned = profile.tuned
    if not tuned:
        return None
    machine = (str(tuned.get("cpu_model", "")), tuned.get("physical_cores"))
    if machine != (facts.cpu_model, facts.physical_cores):
        raise _Mismatch(f"tuned on another machine ({machine[0] or '?'}, {machine[1]} cores)")
    return WEIGHTS["tuned"], f"tuned on this machine ({tuned.get('date', '?')}, edgerun tune)"


# Checked in this order: the first rule that fails is the reason a profile is ruled out.
RULES = (_arch, _os, _jetson, _cpu_flags, _cpu_model, _device_tree, _gpus, _providers)


def score_profile(rules: MatchRules, facts: MachineFacts) -> tuple[int, list[str]] | str:
    """(score, reasons) when every rule holds, else the reason the first failing rule gives."""
    score, reasons = 0, []
    for rule in RULES:
        try:
            hit = rule(rules, facts)
        except _Mismatch as exc:
            return str(exc)
        if hit is not None:
            score += hit[0]
            reasons.append(hit[1])
    return score, reasons


def _score(profile: Profile, facts: MachineFacts) -> tuple[int, list[str]] | str:
    """score_profile on the match rules, then the tuned-on-this-machine rule."""
    result = score_profile(profile.match, facts)
    if isinstance(result, str):
        return result
    try:
        hit = _tuned(profile, facts)
    except _Mismatch as exc:
        return str(exc)
    return result if hit is None else (result[0] + hit[0], [*result[1], hit[1]])


def detect(facts: MachineFacts | None = None, profiles: list[Profile] | None = None) -> Detection:
    """Score `profiles` (default: all) against `facts` (default: this machine); the highest
    score wins, ties going to the id that sorts first. No match: EdgerunError."""
    facts = facts if facts is not None else machine_facts()
    profiles = profiles if profiles is not None else list_profiles()
    ranking: list[tuple[Profile, int, list[str]]] = []
    rejected: list[tuple[Profile, str]] = []
    for profile in profiles:
        result = _score(profile, facts)
        if isinstance(result, str):
            rejected.append((profile, result))
        else:
            ranking.append((profile, *result))
    if not ranking:
        raise EdgerunError(
            f"no device profile matches this machine ({facts.arch or '?'}, {facts.os or '?'})",
            "pass --profile ID, or write a profile in $EDGERUN_HOME/profiles",
        )
    ranking.sort(key=lambda r: (-r[1], r[0].id))
    best = ranking[0]
    return Detection(best[0], best[1], best[2], ranking, rejected)
