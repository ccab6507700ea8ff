"""Device profiles: every shipped file loads, the schema names file/key/line, user overrides,
provider selection with fallback and --strict, memory budgets, and `edgerun profiles` output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.backends.providers import CPU_PROVIDER, check_memory, select_providers
from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.core.plugins import BACKENDS_GROUP, entry_point_names
from edgerun.device.profile import (
    backend_names,
    get_profile,
    list_profiles,
    load_profile_file,
    parse_profile,
)
from edgerun.device.profile_schema import key_lines
from edgerun.power.registry import METERS

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
SHIPPED = sorted(PROFILES_DIR.glob("*.toml"))
REQUIRED_IDS = {
    "generic-x86_64",
    "x86_64-avx512",
    "generic-aarch64",
    "raspberry-pi-5",
    "raspberry-pi-4",
    "jetson-orin",
    "apple-silicon",
    "nvidia-desktop-gpu",
    "intel-openvino",
    "snapdragon",
}
runner = CliRunner()

MINIMAL = """\
id = "tiny"
name = "Tiny"
description = "A test profile."

[match]
arch = ["x86_64"]

[[backends]]
name = "onnxruntime"
"""


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_profile_loads(path: Path) -> None:
    profile = load_profile_file(path)
    assert profile.id == path.stem, "a profile's file name must be its id"
    assert profile.name and profile.description and profile.preferred_formats
    assert {b.name for b in profile.backends} <= set(backend_names())
    ort = profile.backend("onnxruntime")
    if ort is not None:
        assert ort.providers[-1].name == CPU_PROVIDER, "CPU must be the last resort"


def test_installed_profiles_are_exactly_the_files() -> None:
    """A file added to profiles/ that the package does not load (or vice versa) fails here."""
    assert [p.id for p in list_profiles()] == [p.stem for p in SHIPPED]
    assert {p.stem for p in SHIPPED} >= REQUIRED_IDS


def test_minimal_profile_defaults() -> None:
    p = parse_profile(MINIMAL, "tiny.toml")
    assert (p.threads, p.memory_budget_mb, p.power_meter, p.preferred_formats) == (
        None,
        None,
        "auto",
        [],
    )
    assert p.backends[0].providers == [] and p.source == "tiny.toml"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('description = "A test profile."', 'description = "x"\ncolour = "red"'),
            "bad.toml, line 4: colour: unknown key (allowed here: id, name, description,",
        ),
        (('arch = ["x86_64"]', 'arch = "x86_64"'), "bad.toml, line 6: match.arch: expected an"),
        (
            ('arch = ["x86_64"]', 'arch = ["x86_64"]\nthreads = 4'),
            "bad.toml, line 7: match.threads: unknown key (allowed here: arch, os, cpu_flags,",
        ),
        (
            ('name = "onnxruntime"', 'name = "onnxruntime"\n[[backends.providers]]\nnam = "CPU"'),
            "bad.toml, line 11: backends[0].providers[0].nam: unknown key (allowed here: name,",
        ),
        (
            ('name = "onnxruntime"', 'name = "tensorflow"'),
            "bad.toml, line 9: backends[0].name: expected one of "
            f"{', '.join(sorted(entry_point_names(BACKENDS_GROUP)))} (registered backends),"
            " got 'tensorflow'",
        ),
        (
            ('name = "Tiny"', 'name = "Tiny"\nthreads = "four"'),
            "bad.toml, line 3: threads: expected an integer or one of 'auto', got 'four'",
        ),
        (('name = "Tiny"', 'name = "Tiny"\nthreads = 0'), "bad.toml, line 3: threads: must be at"),
        (
            ('name = "Tiny"', 'name = "Tiny"\nmemory_budget_mb = true'),
            "bad.toml, line 3: memory_budget_mb: expected an integer or one of 'auto', got True",
        ),
        (
            ('name = "Tiny"', 'name = "Tiny"\npower_meter = "wattmeter"'),
            f"bad.toml, line 3: power_meter: expected one of auto, none, {', '.join(METERS)}"
            " or 'cmd:COMMAND', got 'wattmeter'",
        ),
        (
            ('name = "Tiny"', 'name = "Tiny"\npreferred_formats = ["onnx-int4", "q4"]'),
            "bad.toml, line 3: preferred_formats[1]: 'q4' is not a format name",
        ),
        (('name = "Tiny"\n', ""), "bad.toml, line 1: (top level): missing required key 'name'"),
    ],
)
def test_schema_errors_name_file_key_and_line(edit: tuple[str, str], message: str) -> None:
    text = MINIMAL.replace(*edit, 1)
    with pytest.raises(EdgerunError) as info:
        parse_profile(text, "bad.toml")
    assert str(info.value).startswith(message), str(info.value)
    assert "edgerun profiles validate FILE" in (info.value.hint or "")


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(MINIMAL + "threads = \n")
    with pytest.raises(EdgerunError, match=r"broken.toml: invalid TOML: .*line 10"):
        load_profile_file(path)


def test_key_lines_tracks_arrays_of_tables_and_skips_strings() -> None:
    text = (
        'notes = """\nfake = 1\n"""\n[[backends]]\nname = "a"\n[[backends]]\nname = "b"\n'
        '[[backends.providers]]\nname = "X"\noptions = { device_id = 0 }\n[backends.options]\n'
        "n_batch = 8\n"
    )
    lines = key_lines(text)
    assert ("fake",) not in lines
    assert lines[("backends", 1, "name")] == 7
    assert lines[("backends", 1, "providers", 0, "options")] == 10
    assert lines[("backends", 1, "options", "n_batch")] == 12


def test_cmd_power_meter_is_allowed() -> None:
    text = MINIMAL.replace('name = "Tiny"', 'name = "Tiny"\npower_meter = "cmd:read-watts --usb"')
    assert parse_profile(text, "t.toml").power_meter == "cmd:read-watts --usb"


def _write_user_profile(home: Path, name: str, text: str) -> Path:
    path = home / "profiles" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_user_profile_overrides_builtin_by_id(edgerun_home: Path) -> None:
    text = MINIMAL.replace('id = "tiny"', 'id = "generic-x86_64"').replace("Tiny", "My x86")
    path = _write_user_profile(edgerun_home, "mine.toml", text)
    profile = get_profile("generic-x86_64")
    assert (profile.name, profile.source) == ("My x86", str(path))
    ids = [p.id for p in list_profiles()]
    assert ids.count("generic-x86_64") == 1 and len(ids) == len(SHIPPED)
    result = runner.invoke(cli, ["profiles", "list"])
    assert "generic-x86_64      My x86  (user)\n" in result.output


def test_broken_user_profile_is_reported(edgerun_home: Path) -> None:
    path = _write_user_profile(edgerun_home, "bad.toml", MINIMAL + "extra = 1\n")
    with pytest.raises(EdgerunError, match=f"{path}, line 10: backends\\[0\\].extra: unknown key"):
        load_profile_file(path)


def test_unknown_profile_lists_known_ids() -> None:
    with pytest.raises(EdgerunError) as info:
        get_profile("raspberry-pi-9")
    assert info.value.message == "unknown profile 'raspberry-pi-9'"
    assert info.value.hint == "known profiles: " + ", ".join(p.stem for p in SHIPPED)


def test_get_profile_accepts_a_path(tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(MINIMAL)
    assert get_profile(str(path)).id == "tiny"
    with pytest.raises(EdgerunError, match="cannot read profile .*missing.toml"):
        get_profile(str(tmp_path / "missing.toml"))


# ---- provider selection --------------------------------------------------------------------


def test_select_providers_takes_the_preferred_available_ones() -> None:
    orin = get_profile("jetson-orin")
    choice = select_providers(orin, "onnxruntime", ["CUDAExecutionProvider", CPU_PROVIDER])
    assert choice.names == ["CUDAExecutionProvider", CPU_PROVIDER]
    assert choice.providers[0][1]["device_id"] == 0
    assert choice.wanted == ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU_PROVIDER]
    assert choice.warnings == [
        "profile 'jetson-orin' wanted TensorrtExecutionProvider,"
        " running CUDAExecutionProvider, CPUExecutionProvider"
    ]


def test_select_providers_falls_back_to_cpu_with_warnings() -> None:
    orin = get_profile("jetson-orin")
    choice = select_providers(orin, "onnxruntime", ["AzureExecutionProvider", CPU_PROVIDER])
    assert choice.providers == [(CPU_PROVIDER, {})]
    assert choice.warnings == [
        "profile 'jetson-orin' wanted TensorrtExecutionProvider, running CPUExecutionProvider",
        "profile 'jetson-orin' wanted CUDAExecutionProvider, running CPUExecutionProvider",
    ]


def test_select_providers_strict_refuses_the_fallback() -> None:
    with pytest.raises(EdgerunError) as info:
        select_providers(get_profile("apple-silicon"), "onnxruntime", [CPU_PROVIDER], strict=True)
    assert info.value.message == (
        "profile 'apple-silicon' wants CoreMLExecutionProvider, which this onnxruntime build"
        " lacks (available: CPUExecutionProvider)"
    )
    assert "strict=False" in (info.value.hint or "")
    assert "drop --strict" in (info.value.cli_hint or "")


def test_select_providers_cpu_profile_and_unlisted_backend() -> None:
    generic = get_profile("generic-x86_64")
    choice = select_providers(generic, "onnxruntime", [CPU_PROVIDER], strict=True)
    assert (choice.providers, choice.warnings) == ([(CPU_PROVIDER, {})], [])
    # raspberry-pi-4 lists no genai backend: CPU, silently, is the honest default.
    choice = select_providers(get_profile("raspberry-pi-4"), "genai", [CPU_PROVIDER])
    assert (choice.names, choice.warnings) == ([CPU_PROVIDER], [])


# ---- memory budget ---------------------------------------------------------------------------


def test_check_memory_fixed_budget() -> None:
    profile = parse_profile(
        MINIMAL.replace('name = "Tiny"', 'name = "Tiny"\nmemory_budget_mb = 100'), "t.toml"
    )
    check_memory(profile, 70 * 2**20, 30 * 2**20)  # exactly the budget fits
    with pytest.raises(EdgerunError) as info:
        check_memory(profile, 80 * 2**20, 30 * 2**20)
    assert info.value.message == (
        "the model needs 110 MiB (weights 80 MiB + KV cache 30 MiB) but profile 'tiny' allows"
        " 100 MiB (memory_budget_mb)"
    )
    assert "shorter context" in (info.value.hint or "")


def test_check_memory_share_of_ram() -> None:
    pi4 = get_profile("raspberry-pi-4")  # memory_fraction 0.7
    ram = 4096 * 2**20
    check_memory(pi4, 2000 * 2**20, 800 * 2**20, ram_bytes=ram)
    with pytest.raises(EdgerunError, match=r"allows 2867 MiB \(70% of RAM\)"):
        check_memory(pi4, 2500 * 2**20, 400 * 2**20, ram_bytes=ram)


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_list() -> None:
    result = runner.invoke(cli, ["profiles", "list"])
    assert result.exit_code == 0, result.output
    width = max(len(p.stem) for p in SHIPPED)
    expected = "".join(f"{p.id:<{width}}  {p.name}\n" for p in list_profiles())
    assert result.output == expected
    assert result.output.splitlines()[0] == "apple-silicon       Apple silicon Mac"
    data = json.loads(runner.invoke(cli, ["profiles", "list", "--json"]).output)
    assert [d["id"] for d in data] == [p.stem for p in SHIPPED]
    assert {d["origin"] for d in data} == {"built-in"}


def test_cli_show() -> None:
    source = str(PROFILES_DIR / "raspberry-pi-5.toml")
    result = runner.invoke(cli, ["profiles", "show", "raspberry-pi-5"])
    assert result.exit_code == 0, result.output
    assert result.output.replace(source, "SRC") == (
        "raspberry-pi-5: Raspberry Pi 5\n"
        "  Raspberry Pi 5 (4x Cortex-A76): llama.cpp Q4_0 on 4 threads; PMIC rail power via"
        " vcgencmd.\n"
        "  source: SRC\n"
        "  threads: 4\n"
        "  preferred formats: gguf-q4_0, gguf-q4_k_m, onnx-int4\n"
        "  memory budget: 75% of RAM\n"
        "  power meter: rpi5\n"
        "  requires CPU features: asimd, asimddp\n"
        "  match: arch aarch64 / armv7l; device tree Raspberry Pi 5 / Raspberry Pi Compute"
        " Module 5\n"
        "  backends:\n"
        "    1. llamacpp  n_gpu_layers=0, n_batch=256, use_mmap=True\n"
        "    2. onnxruntime  graph_optimization_level='ORT_ENABLE_ALL'\n"
        "       - CPUExecutionProvider\n"
        "    3. genai\n"
        "       - CPUExecutionProvider\n"
        "  export options: block_size=32, accuracy_level=4\n"
    )
    data = json.loads(runner.invoke(cli, ["profiles", "show", "jetson-orin", "--json"]).output)
    assert data["backends"][0]["providers"][0] == {
        "name": "TensorrtExecutionProvider",
        "options": {
            "device_id": 0,
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": "trt-cache",
            "trt_timing_cache_enable": True,
            "trt_max_workspace_size": 2147483648,
        },
    }
    assert data["backends"][2]["options"]["n_gpu_layers"] == -1


def test_cli_show_unknown_id() -> None:
    result = runner.invoke(cli, ["profiles", "show", "nope"])
    assert result.exit_code == 2
    assert result.output.startswith("error: unknown profile 'nope' (known profiles: apple-silicon,")


def test_cli_validate(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    result = runner.invoke(cli, ["profiles", "validate", str(good)])
    assert (result.exit_code, result.output) == (0, f"ok: {good} is a valid profile ('tiny')\n")
    result = runner.invoke(cli, ["profiles", "validate", str(good), "--json"])
    assert json.loads(result.output) == {"valid": True, "file": str(good), "id": "tiny"}
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace('arch = ["x86_64"]', 'arch = ["x86_64"]\ngpu = ["NVIDIA"]'))
    result = runner.invoke(cli, ["profiles", "validate", str(bad)])
    assert result.exit_code == 2
    assert result.output == (
        f"error: {bad}, line 7: match.gpu: unknown key (allowed here: arch, os, cpu_flags,"
        " cpu_model, device_tree, jetson, gpus, providers) (fix the profile file; `edgerun"
        " profiles validate FILE` checks it)\n"
    )


def test_docstring_example_is_a_valid_profile() -> None:
    import textwrap

    import edgerun.device.profile

    example = textwrap.dedent((edgerun.device.profile.__doc__ or "").split("::\n\n", 1)[1])
    profile = parse_profile(example, "docstring")
    assert (profile.id, profile.threads, profile.memory_budget_mb) == ("my-board", 4, 3000)
    assert profile.backends[0].providers[0].options == {"device_id": 0}


def test_options_allow_one_nested_table() -> None:
    text = MINIMAL + '[backends.options.session_config]\n"session.intra_op.allow_spinning" = "0"\n'
    profile = parse_profile(text, "t.toml")
    assert profile.backends[0].options == {
        "session_config": {"session.intra_op.allow_spinning": "0"}
    }
    deeper = MINIMAL + "[backends.options.a.b]\nc = 1\n"
    with pytest.raises(EdgerunError, match=r"line 10: backends\[0\]\.options\.a\.b: expected a"):
        parse_profile(deeper, "t.toml")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_backend_options_are_real_library_options(path: Path) -> None:
    """Options are passed straight to onnxruntime.SessionOptions and llama_cpp.Llama: check the
    names against the installed libraries so that a typo in a profile fails here, not on a device."""
    import inspect

    import onnxruntime

    profile = load_profile_file(path)
    ort = profile.backend("onnxruntime")
    session_options = onnxruntime.SessionOptions()
    for key in ort.options if ort else {}:
        assert key in ("graph_optimization_level", "session_config") or hasattr(
            session_options, key
        ), key
    llama = profile.backend("llamacpp")
    if llama is None:
        return
    llama_cpp = pytest.importorskip("llama_cpp")
    known = set(inspect.signature(llama_cpp.Llama.__init__).parameters)
    assert set(llama.options) <= known, set(llama.options) - known


def test_a_plugin_backend_registered_by_a_distribution_is_accepted_by_a_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Profiles take backend names from the entry points, so a third-party backend works."""
    dist = tmp_path / "edgerun_fpga-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: edgerun-fpga\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[edgerun.backends]\nfpga = edgerun_fpga.backend:FpgaBackend\n"
    )
    text = MINIMAL.replace('name = "onnxruntime"', 'name = "fpga"')
    with pytest.raises(EdgerunError, match="got 'fpga'"):
        parse_profile(text, "before.toml")  # not installed yet
    monkeypatch.syspath_prepend(str(tmp_path))
    profile = parse_profile(text, "fpga.toml")
    assert [b.name for b in profile.backends] == ["fpga"]
    assert "fpga" in backend_names()


def test_profile_names_come_from_the_registries() -> None:
    from edgerun.device.profile import format_prefixes, power_meter_names
    from edgerun.exporters.formats import FAMILY_MODULES
    from edgerun.power.registry import METERS

    assert set(METERS) <= set(power_meter_names())
    assert format_prefixes() == list(FAMILY_MODULES)
    text = MINIMAL.replace('name = "Tiny"', 'name = "Tiny"\npower_meter = "battery"')
    assert parse_profile(text, "t.toml").power_meter == "battery"
