"""What an export deployed beyond the model itself, kept when the configs are written again.

``python -m t2vserve.export --tracks fp16`` serves some PRECISION tracks only, and ``--denoiser-queue-delay-us``
(or ``python -m t2vserve.batcher_delay`` afterwards) sets the denoisers' batcher delay. The compose ``engines``
service rewrites the generated configs when it reuses an export (``engines_cli.export_if_needed``), so it reads
both back here first: the tracks from ``deployment.json`` beside the export's geometry, the delay from the
configs as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Collection

#: Written by ``export_model`` into ``<repository>/scheduler/1/``: {"tracks": [...] or null (every track)}.
DEPLOYMENT_FILE = "deployment.json"


def deployment_path(repository: Path) -> Path:
    return Path(repository) / "scheduler" / "1" / DEPLOYMENT_FILE


def write_deployment(repository: Path, tracks: Collection[str] | None) -> None:
    """Record the PRECISION tracks ``repository`` serves (None: every track of its model)."""
    path = deployment_path(repository)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tracks": None if tracks is None else sorted(tracks)}, indent=2) + "\n")


def deployed_tracks(repository: Path) -> list[str] | None:
    """The tracks an export of ``repository`` was told to serve; None: every track (or an export from before the file)."""
    path = deployment_path(repository)
    if not path.exists():
        return None
    tracks = json.loads(path.read_text()).get("tracks")
    return None if tracks is None else [str(track) for track in tracks]
