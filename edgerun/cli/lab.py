"""`edgerun lab scheduler|worker|devices|bench|tune`: benchmark and tune many devices at once on
Dask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgerun.cli.options import (
    devices_option,
    echo_json,
    json_option,
    objective_option,
    wide_option,
    workload_options,
)


def _tls_options(f: Any) -> Any:
    """`--tls-ca-file/--tls-cert/--tls-key`: Dask TLS (all three, or none)."""
    for name, what in (
        ("--tls-key", "This node's TLS private key (PEM)."),
        ("--tls-cert", "This node's TLS certificate (PEM), signed by the lab CA."),
        ("--tls-ca-file", "The lab's CA certificate (PEM); with --tls-cert/--tls-key: TLS only."),
    ):
        f = click.option(name, type=click.Path(exists=True, dir_okay=False), help=what)(f)
    return f


def _tls(kwargs: dict[str, Any]) -> Any:
    from edgerun.lab.cluster import tls_from_options

    return tls_from_options(kwargs["tls_ca_file"], kwargs["tls_cert"], kwargs["tls_key"])


@click.group()
def lab() -> None:
    """Benchmark many devices at once on Dask distributed (needs `pip install 'edgerun[lab]'`).

    A Dask cluster runs any code it is sent: keep it on the lab network and use TLS."""


@lab.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8786, show_default=True, help="Port to listen on.")
@_tls_options
def scheduler(host: str, port: int, **kwargs: Any) -> None:
    """Start a Dask scheduler for the lab (`dask scheduler` works as well)."""
    from edgerun.core.untrusted import is_loopback
    from edgerun.lab.cluster import run_scheduler

    if not is_loopback(host) and _tls(kwargs) is None:
        click.echo(f"warning: listening on {host} without TLS: anyone there can run code", err=True)
    run_scheduler(host, port, _tls(kwargs), lambda a: click.echo(f"scheduler at {a}", err=True))


@lab.command()
@click.argument("scheduler")
@click.option("--name", help="Device id (default: this host's name).")
@click.option(
    "--machine",
    envvar="EDGERUN_LAB_MACHINE",
    hidden=True,
    type=click.Path(exists=True, file_okay=False),
    help="Pose as the machine-facts directory DIR (tests).",
)  # a lab-simulation aid, hidden: results then record `posing` (see edgerun.lab.device)
@click.option(
    "--insecure",
    is_flag=True,
    help="Join a scheduler off this host without TLS (anyone there can run code here).",
)
@_tls_options
def worker(
    scheduler: str, name: str | None, machine: str | None, insecure: bool, **kwargs: Any
) -> None:
    """Serve this device to the lab: one Dask worker with a single task slot, advertising the
    detected profile, CPU, cores, memory, OS, accelerators and library versions. It listens
    only on the interface that reaches the scheduler, and needs TLS unless that is this host."""
    import os
    import platform

    from edgerun.lab.cluster import run_worker

    if machine:
        os.environ["EDGERUN_LAB_MACHINE"] = machine

    def ready(address: str, info: dict[str, Any]) -> None:
        click.echo(f"device {info['id']} ({info['profile']}) serving at {address}", err=True)

    if insecure and _tls(kwargs) is None:
        click.echo(
            "warning: joining without TLS: anyone on that network can run code here", err=True
        )
    run_worker(scheduler, name or platform.node(), _tls(kwargs), ready, insecure)


@lab.command()
@click.argument("scheduler")
@json_option
@wide_option
@_tls_options
def devices(scheduler: str, as_json: bool, wide: bool, **kwargs: Any) -> None:
    """List the connected devices, and warn about version skew between them."""
    from edgerun.bench.device import library_versions
    from edgerun.lab.cluster import connect, list_devices
    from edgerun.lab.device import version_skew

    with connect(scheduler, _tls(kwargs)) as client:
        found = list_devices(client)
    skew = version_skew([d for d in found if "error" not in d], library_versions())
    if as_json:
        echo_json({"devices": [_brief(d) for d in found], "warnings": skew})
        return
    from edgerun.lab.render import print_devices

    print_devices(found, skew, wide=wide)


def _brief(device: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in device.items() if k not in ("fingerprint", "installed")}


@lab.command()
@click.argument("scheduler")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@devices_option
@workload_options
@click.option(
    "--stall-timeout",
    default=300.0,
    show_default=True,
    help="Fail a device silent this many seconds.",
)
@click.option(
    "--rejoin-wait",
    default=60.0,
    show_default=True,
    help="Wait this long for a lost device to rejoin (retried once).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    help="Write results JSON (as each device ends).",
)
@click.option("--append", is_flag=True, help="Add these runs to an existing --json file.")
@click.option(
    "--fidelity",
    is_flag=True,
    help="Also score each artifact on each device against its shipped reference"
    " (verify --fidelity): a column, and `fidelity` in the results.",
)
@_tls_options
def bench(scheduler: str, artifacts: tuple[Path, ...], **kw: Any) -> None:
    """Ship artifacts to every device (content-addressed, verified on arrival), run the same
    `edgerun bench` workload on each at once, and write one results file for `edgerun compare`.

    The workload options are `edgerun bench`'s; --threads and --profile (a shipped profile id
    here: devices do not have this host's files) apply to every device, each device's own by
    default. A device may decline an artifact (no backend, memory budget); a device that
    disconnects is recorded as failed (and retried once if it rejoins); Ctrl-C cancels every
    device."""
    from rich.console import Console

    from edgerun.bench.device import library_versions
    from edgerun.bench.workload import Workload
    from edgerun.cli.bench import _ints
    from edgerun.lab.cluster import connect, list_devices, select_devices
    from edgerun.lab.device import version_skew
    from edgerun.lab.orchestrate import Lab, LabRun, check_profile
    from edgerun.lab.render import print_status, progress_display
    from edgerun.lab.results import ResultsFile
    from edgerun.lab.ship import local_artifact

    workload = Workload(
        _ints(kw["prompt_tokens"]),
        kw["gen_tokens"],
        kw["reps"],
        kw["warmup"],
        kw["threads"],
        kw["profile"],
        kw["ctx"],
    )
    check_profile(kw["profile"])
    local = [local_artifact(a) for a in artifacts]
    results = ResultsFile(kw["json_path"], kw["append"])
    first = len(results.data["runs"])
    console = Console(stderr=True)
    options = {
        "workload": workload.to_json(),
        "power": kw["power_spec"],
        "assume_watts": kw["assume_watts"],
        "idle_seconds": kw["idle_seconds"],
        "loader": kw["loader"],
        "fidelity": kw["fidelity"],
    }
    spec = LabRun(local, options, kw["stall_timeout"], kw["rejoin_wait"])
    with connect(scheduler, _tls(kw)) as client:
        chosen = select_devices(list_devices(client), kw["device_spec"], scheduler)
        for warning in version_skew(chosen, library_versions()):
            console.print(f"[yellow]warning:[/] {warning}")
        with progress_display(console, [d["id"] for d in chosen]) as on_progress:
            lab_run = Lab(client, spec, on_progress)
            try:
                lab_run.run(chosen, results)
            except KeyboardInterrupt:
                done = len(results.data["runs"]) - first
                where = f" in {kw['json_path']}" if kw["json_path"] else ""
                console.print(
                    f"Interrupted: every device cancelled; {done} device runs kept{where}.",
                    soft_wrap=True,  # one line, whatever the path's length
                )
                raise click.exceptions.Exit(130) from None
    if lab_run.scheduler_lost is not None:
        for run in results.data["runs"][first:]:  # one line per device, then the error line
            click.echo(
                f"{run['lab']['device']}: {run['lab']['status']}: {run['lab']['reason']}", err=True
            )
        raise lab_run.scheduler_lost
    print_status(results.status_rows(first), kw["json_path"])


@lab.command("tune")
@click.argument("scheduler")
@click.argument("artifact", type=click.Path(path_type=Path))
@devices_option
@click.option("--profile", help="Base profile id for every device (default: each device's own).")
@click.option("--budget", default="10m", show_default=True, help="Per device: 90s, 10m, 1h.")
@objective_option
@click.option("--power", "power_spec", default="auto", show_default=True, help="Energy meter.")
@click.option("--prompt-tokens", default=64, show_default=True, help="Prompt length per trial rep.")
@click.option("--gen-tokens", default=64, show_default=True, help="Tokens generated per trial rep.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("lab-profiles"),
    show_default=True,
    help="Folder for the collected profiles: OUT/<device>/tuned-<profile>.toml.",
)
@click.option(
    "--stall-timeout",
    default=300.0,
    show_default=True,
    help="Fail a device silent this many seconds.",
)
@_tls_options
def tune(scheduler: str, artifact: Path, **kw: Any) -> None:
    """Ship an artifact to every device and run `edgerun tune` on each at once: each device
    writes its tuned profile into its own $EDGERUN_HOME (its run, serve and bench use it), and
    the host collects them all under --out with their provenance."""
    from rich.console import Console

    from edgerun.cli.tune import parse_budget
    from edgerun.lab.cluster import connect, list_devices, select_devices
    from edgerun.lab.orchestrate import LabRun, check_profile
    from edgerun.lab.render import progress_display
    from edgerun.lab.ship import local_artifact
    from edgerun.lab.tune import LabTune, TunedProfiles

    check_profile(kw["profile"])
    options = {
        "profile": kw["profile"],
        "budget_s": parse_budget(kw["budget"]),
        "objective": kw["objective"],
        "power": kw["power_spec"],
        "prompt_tokens": kw["prompt_tokens"],
        "gen_tokens": kw["gen_tokens"],
    }
    spec = LabRun([local_artifact(artifact)], options, kw["stall_timeout"], 0.0)
    profiles = TunedProfiles(kw["out"])
    console = Console(stderr=True)
    with connect(scheduler, _tls(kw)) as client:
        chosen = select_devices(list_devices(client), kw["device_spec"], scheduler)
        with progress_display(console, [d["id"] for d in chosen]) as on_progress:
            lab_run = LabTune(client, spec, on_progress)
            lab_run.run(chosen, profiles)
    for row in sorted(profiles.rows, key=lambda r: r["device"]):
        if row["status"] == "ok":
            click.echo(f"{row['device']}: {row['winner']}: {row['measured']} ({row['file']})")
        else:
            click.echo(f"{row['device']}: {row['status']}: {row['reason']}")
    if lab_run.scheduler_lost is not None:
        raise lab_run.scheduler_lost
