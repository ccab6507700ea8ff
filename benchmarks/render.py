"""The results as text: a Markdown block (for benchmarks/README.md) and a rich table (terminal)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from edgerun.core.home import atomic_write_text

START, END = "<!-- results:start -->", "<!-- results:end -->"
COLUMNS = (
    "row", "format", "decode tok/s", "prefill tok/s", "TTFT ms", "peak RSS MB", "size MB",
    "x best peer", "% roofline", "agree", "valid",
)  # fmt: skip


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.0f}"


def cells(x: dict[str, Any], gen_tokens: int) -> list[str]:
    """The table cells of one summary line, in COLUMNS order."""
    frac = x.get("roofline_frac")
    agree = x.get("agree")
    return [
        x["name"],
        x["fmt"],
        _num(x["decode_tok_s"]),
        _num(x["prefill_tok_s"], 0),
        _num(x["ttft_s"] * 1e3 if x["ttft_s"] is not None else None, 0),
        _mb(x.get("peak_rss_bytes")),
        _mb(x.get("size_bytes")),
        _num(x.get("vs_best_peer"), 2),
        "-" if frac is None else f"{frac * 100:.0f}%",
        "-" if agree is None else f"{agree}/{gen_tokens}",
        {True: "pass", False: "FAIL"}.get(x.get("valid"), "-"),  # type: ignore[arg-type]
    ]


def machine_line(machine: dict[str, Any], bandwidth: dict[str, Any] | None) -> str:
    """One line describing the machine and its measured bandwidth."""
    bw = (
        f"{bandwidth['gb_s']} GB/s (copy {bandwidth['copy_gb_s']}, triad "
        f"{bandwidth['triad_gb_s']}; {bandwidth['method']})"
        if bandwidth
        else "n/a"
    )
    load = machine.get("loadavg")
    load_text = f"; 1-min load average at start {load[0]:.2f}" if load else ""
    return (
        f"{machine['cpu']} ({machine['arch']}), {machine['logical_cores']} logical cores, "
        f"flags {' '.join(machine['flags']) or '-'}, {machine['ram_bytes'] / 2**30:.1f} GiB RAM, "
        f"{machine['kernel']}, Python {machine['python']}; memory bandwidth {bw}{load_text}"
    )


def markdown(results: dict[str, Any]) -> str:
    """The README block: settings, machine, one table per prompt length, head-to-head, skips."""
    w = results["workload"]
    libs = ", ".join(f"{k} {v}" for k, v in results["machine"]["libraries"].items() if v)
    lines = [
        f"Run `{results['command']}` at {results['created']} (commit {results['machine']['git']}), "
        f"model {w['model']}, {w['threads']} threads, greedy, {w['gen_tokens']} new tokens "
        f"(EOS ignored), median of {w['reps']} interleaved repetitions after {w['warmup']} warm-up.",
        "",
        f"Machine: {machine_line(results['machine'], results.get('bandwidth'))}.",
        "",
        f"Libraries: {libs}.",
    ]
    gen = w["gen_tokens"]
    for length in sorted({x["prompt_tokens"] for x in results["summary"]}):
        lines += ["", f"**Prompt {length} tokens**", "", "| " + " | ".join(COLUMNS) + " |"]
        lines.append("|" + "---|" * len(COLUMNS))
        for x in results["summary"]:
            if x["prompt_tokens"] == length:
                lines.append("| " + " | ".join(cells(x, gen)) + " |")
    if results.get("head_to_head"):
        lines += ["", "**edgerun vs each peer (decode tok/s ratio)**", ""]
        for h in results["head_to_head"]:
            vs = ", ".join(f"{k} {v:.2f}x" for k, v in h["vs"].items())
            lines.append(f"- prompt {h['prompt_tokens']}, {h['edgerun']}: {vs}")
    if results.get("targets"):
        lines += ["", "**Speed targets (median of per-round decode tok/s ratios)**", ""]
        lines += [f"- {target_line(t)}" for t in results["targets"]]
    if results.get("same_file"):
        lines += ["", "**edgerun vs llama.cpp's raw loop on the same GGUF file (decode)**", ""]
        lines += [f"- {same_file_line(s)}" for s in results["same_file"]]
    not_run = [r for r in results["rows"] if r["status"] != "ok"]
    if not_run:
        lines += ["", "**Rows that did not run**", ""]
        lines += [f"- {r['name']}: {r['status']}: {r['reason']}" for r in not_run]
    return "\n".join(lines)


def target_line(t: dict[str, Any]) -> str:
    """One speed target: the paired ratio, its spread, the ratio of medians, met or not."""
    return (
        f"prompt {t['prompt_tokens']}, {t['edgerun']} / {t['peer']}: {t['ratio']:.2f}x"
        f" (rounds {t['paired_min']:.2f}-{t['paired_max']:.2f}, ratio of medians"
        f" {t['ratio_of_medians']:.2f}x), target >= {t['goal']:.2f}x:"
        f" {'met' if t['met'] else 'NOT met'}"
    )


def same_file_line(s: dict[str, Any]) -> str:
    """One line of the same-file comparison: per-token times and what edgerun adds."""
    return (
        f"prompt {s['prompt_tokens']}, {s['fmt']}: edgerun {s['edgerun_ms_per_token']:.2f} ms/token,"
        f" llama.cpp {s['llama_cpp_ms_per_token']:.2f} ms/token:"
        f" {s['overhead_ms_per_token']:+.2f} ms/token"
    )


def update_readme(readme: Path, block: str, start: str = START, end: str = END) -> None:
    """Replace the text between the `start` and `end` markers of `readme` with `block`."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {start} ... {end} markers")
    new = pattern.sub(lambda _: f"{start}\n{block}\n{end}", text)
    atomic_write_text(readme, new)


def print_table(results: dict[str, Any]) -> None:
    """The same tables on the terminal, through rich."""
    from rich.console import Console
    from rich.table import Table

    # piped output (logs, CI) gets a fixed width wide enough for every column
    console = Console() if sys.stdout.isatty() else Console(width=170)
    gen = results["workload"]["gen_tokens"]
    for length in sorted({x["prompt_tokens"] for x in results["summary"]}):
        table = Table(title=f"prompt {length} tokens, {gen} new tokens")
        for col in COLUMNS:
            table.add_column(col, justify="left" if col in ("row", "format") else "right")
        for x in results["summary"]:
            if x["prompt_tokens"] == length:
                table.add_row(*cells(x, gen))
        console.print(table)
    for h in results.get("head_to_head", []):
        vs = ", ".join(f"{k} {v:.2f}x" for k, v in h["vs"].items())
        console.print(f"prompt {h['prompt_tokens']}, {h['edgerun']}: {vs}")
    for t in results.get("targets", []):
        console.print(target_line(t), highlight=False)
    for s in results.get("same_file", []):
        console.print(same_file_line(s), highlight=False)
    for r in results["rows"]:
        if r["status"] != "ok":
            console.print(f"[yellow]{r['status']}[/]: {r['name']}: {r['reason']}", highlight=False)
