"""The README's shell blocks. Every `edgerun ...` line parses with today's CLI (the commands,
options and argument counts a reader copies exist); the demo's step-by-step block runs as written
(its two placeholders made explicit); every other block is named with what it needs to run, and
the extras its `pip install` lines name exist."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest

from edgerun.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[list[str]]:
    """The README's ```bash and ```sh blocks: their command lines, continuation lines joined and
    comments dropped."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        lines = [line.split(" # ")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def _command_lines() -> list[str]:
    return [line for block in _blocks() for line in block if line.startswith("edgerun ")]


def _parse(argv: list[str]) -> None:
    """Parse argv as click would run it, down to the leaf command, without invoking it."""
    command: click.Command = cli
    name = "edgerun"
    ctx = None
    while True:
        ctx = command.make_context(name, argv, parent=ctx, resilient_parsing=False)
        if not isinstance(command, click.Group):
            return
        args = [*ctx.protected_args, *ctx.args]
        if not args:
            return
        name, sub, argv = command.resolve_command(ctx, args)
        assert sub is not None, f"no command {name}"
        command = sub


COMMANDS = _command_lines()


def test_the_readme_has_command_lines() -> None:
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses(line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the files a command names exist as empty placeholders here
    for token in shlex.split(line):
        if re.fullmatch(r"[\w./-]+\.(pem|key|toml|txt)", token):
            (tmp_path / token).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / token).touch()
    try:
        _parse(shlex.split(line)[1:])
    except click.exceptions.Exit:  # --help, --version
        pass
    except click.UsageError as exc:
        pytest.fail(f"README command does not parse: {line}\n  {exc.format_message()}")


@pytest.mark.parametrize(
    "argv", [["bench", "out/x", "--no-such-option"], ["exprot", "m"], ["lab", "bench"]]
)
def test_the_check_catches_a_stale_command(argv: list[str]) -> None:
    with pytest.raises(click.UsageError):
        _parse(argv)


#: The README's shell blocks that no test runs as written (keyed by the start of their first
#: line), with what they need; the one block that runs is DEMO's. A new block goes into one or
#: the other.
NEEDS = {
    "make demo": "a fresh clone and minutes of setup; its steps are DEMO's block, run below",
    "pip install .": "a package index and a fresh environment (the extras are checked below)",
    "edgerun tune out/ --budget 10m": "minutes of trials on an export (tests/test_tune.py)",
    "edgerun serve out/onnx-int4": "a server left running and curl (tests/test_serve.py)",
    "edgerun lab scheduler": "devices running workers and TLS certificates (tests/test_lab_tls.py)",
}
DEMO = "edgerun pull smollm2-135m"


def test_every_block_runs_or_says_what_it_needs() -> None:
    firsts = [block[0] for block in _blocks()]
    keys = [next((k for k in [DEMO, *NEEDS] if first.startswith(k)), first) for first in firsts]
    assert sorted(keys) == sorted([DEMO, *NEEDS]), firsts


def test_the_extras_and_the_wheel_the_install_block_names_exist() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]
    block = next(b for b in _blocks() if b[0] == "pip install .")
    named = {e for line in block for e in re.findall(r"\[(\w+)\]", line)}
    assert named and named <= set(project["optional-dependencies"]), named
    wheels = {w for line in block for w in re.findall(r"edgerun-([\w.]+)-py3-none-any\.whl", line)}
    assert wheels == {project["version"]}


@pytest.mark.slow  # minutes: two exports with validation, a bench at its defaults
def test_the_demo_steps_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick start's step-by-step block, each line run through the CLI in a fresh
    directory, with its placeholders made explicit: the demo model is the tests' tiny llama with
    a 1024-token context (bench's default prompts of 512 tokens and 128 new ones fit; pulling
    SmolLM2 needs PyPI and its exports take minutes), and other-device.json is r.json as
    another device wrote it. Run as an 80-column terminal's pipe (COLUMNS=80): export's closing
    table fits it and shows each artifact's fidelity whole."""
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from tests.tiny_models import SPECS, build_tiny_model

    model_type, overrides = SPECS["llama"]
    spec = (model_type, {**overrides, "max_position_embeddings": 1024})
    tiny_llama = build_tiny_model("llama", tmp_path / "tiny-llama", spec=spec)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    block = next(b for b in _blocks() if b[0] == DEMO)
    outputs = {}
    assert [shlex.split(line)[1] for line in block] == ["pull", "export", "run", "bench", "compare"]
    for line in block:
        argv = [str(tiny_llama) if a == "smollm2-135m" else a for a in shlex.split(line)[1:]]
        if argv[0] == "compare":
            other = json.loads(Path("r.json").read_text())
            other["runs"][0]["device"]["name"] = "other-device"
            Path("other-device.json").write_text(json.dumps(other))
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 0, (line, result.output[-2000:])
        outputs[argv[0]] = result.output
    assert outputs["run"].strip()
    lines = outputs["export"].splitlines()
    title = next(i for i, line in enumerate(lines) if line.strip() == "edgerun export")
    end = next(i for i, line in enumerate(lines) if i > title and line.startswith("PPL×, KL"))
    table = lines[title:end]
    assert all(len(line) <= 80 and "…" not in line for line in table), table
    for artifact in ("onnx-int4", "gguf-q4_k_m"):
        manifest = json.loads(Path("out", artifact, "edgerun.json").read_text())
        v = manifest["validation"]
        assert v["passed"] is True, artifact
        [row] = [line.split() for line in table if line.startswith(artifact + " ")]
        assert f"{v['mean_kl']:.4f}" in row and f"{v['ppl_ratio']:.4g}" in row, row
    page = Path("report.html").read_text(encoding="utf-8")
    assert "other-device" in page and "gguf-q4_k_m" in page
