"""Lab mode: benchmark many devices at once on Dask distributed (the optional `lab` extra).

One Dask scheduler on the lab host, one single-slot Dask worker per device advertising what it
is (edgerun.lab.device); artifacts shipped content-addressed and verified on arrival
(edgerun.lab.store, edgerun.lab.ship); the same `edgerun bench` workload run on every device with
its faults recorded (edgerun.lab.orchestrate); one results file in the existing schema
(edgerun.lab.results). Nothing here imports dask until a lab command runs.
"""

from __future__ import annotations

from edgerun.core.errors import require


def require_dask() -> None:
    """Raise MissingExtraError (naming `pip install 'edgerun[lab]'`) without Dask distributed."""
    require("distributed", "lab")
