"""Profiles from elsewhere: a broken user file is a warning, not a failure of every command;
the TOML loader gives a Profile or one EdgerunError for any input."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.device.profile import get_profile, list_profiles, load_profile_file, parse_profile
from tests.fuzz import FUZZ, hypothesis
from tests.test_profiles import MINIMAL

st = hypothesis.strategies
runner = CliRunner()


def _user_file(home: Path, name: str, data: str | bytes) -> Path:
    path = home / "profiles" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "content",
    [MINIMAL + "extra = 1\n", b"\xff\xfeid = 1", "id = [", 'id = "x"\n'],
    ids=["unknown key", "not UTF-8", "bad TOML", "missing keys"],
)
def test_one_broken_user_profile_is_a_warning(
    edgerun_home: Path, caplog: pytest.LogCaptureFixture, content: str | bytes
) -> None:
    bad = _user_file(edgerun_home, "bad.toml", content)
    _user_file(edgerun_home, "good.toml", MINIMAL)
    with caplog.at_level(logging.WARNING, logger="edgerun.device.profile"):
        ids = [p.id for p in list_profiles()]
        assert get_profile("generic-x86_64").id == "generic-x86_64"
    assert "tiny" in ids  # the other user profile still loads
    warnings = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"skipping the user profile {bad}: ")
    result = runner.invoke(cli, ["profiles", "list"])
    assert result.exit_code == 0 and "tiny" in result.output
    result = runner.invoke(cli, ["profiles", "validate", str(bad)])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert result.output.count("\n") == 1


def test_non_utf8_profile_file_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(b'id = "\xff"')
    with pytest.raises(EdgerunError, match="is not UTF-8 text"):
        load_profile_file(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [("threads = 100000", "threads: must be at most 4096"), ("memory_fraction = nan", "(0, 1]")],
)
def test_absurd_numbers_are_refused(line: str, message: str) -> None:
    text = MINIMAL.replace('name = "Tiny"', f'name = "Tiny"\n{line}')
    with pytest.raises(EdgerunError, match=message.replace("(", r"\(").replace("]", r"\]")):
        parse_profile(text, "p.toml")


TOML_VALUES = st.sampled_from(
    [
        "1",
        "-1",
        "0",
        "1e400",
        "nan",
        "inf",
        '"auto"',
        '"cmd:rm -rf /"',
        "true",
        "[]",
        "[1, 2]",
        '["a"]',
        "{}",
        "{a = {b = {c = 1}}}",
        "1979-05-27",
        '"\\u0000"',
        '"x"',
        "[[1]]",
    ]
)


@FUZZ
@hypothesis.given(
    st.lists(st.tuples(st.sampled_from(MINIMAL.splitlines()), TOML_VALUES), max_size=4),
    st.integers(0, len(MINIMAL)),
)
def test_fuzz_profile_values(edits: list[tuple[str, str]], cut: int) -> None:
    text = MINIMAL
    for line, value in edits:
        if "=" in line:
            text = text.replace(line, line.split("=")[0] + "= " + value, 1)
    _parse_or_error(text)
    _parse_or_error(text[:cut])


@FUZZ
@hypothesis.given(st.binary(max_size=120))
def test_fuzz_profile_bytes(raw: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.toml"
        path.write_bytes(MINIMAL.encode()[:40] + raw)
        try:
            load_profile_file(path)
        except EdgerunError as exc:
            assert "\n" not in str(exc)


def _parse_or_error(text: str) -> None:
    try:
        parse_profile(text, "p.toml")
    except EdgerunError as exc:
        assert str(exc).startswith("p.toml")
