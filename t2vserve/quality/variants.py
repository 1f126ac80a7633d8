"""The tracks ``make quality`` compares: named sets of request overrides, per model family (``data/quality_set.json``).

A variant is a name and the ``GenerationRequest`` fields it sets (``precision``, ``step_cache``,
``steps``, ...); ``default`` says whether requests get it without asking (the gate applies to those
only: a track that fails it must not be the default). Each family has one reference (its full-precision
track) and any number of variants, so a new track (another precision, a distilled student) is a new
entry in the file, not code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..client import GenerationRequest
from ..quantize import DATA_DIR
from ..spec import DEFAULT_TIER
from ..geometry import ModelGeometry

QUALITY_SET = DATA_DIR / "quality_set.json"

#: Request fields a variant may set (the prompt and seed come from the quality set's cases).
OVERRIDABLE = {f.name for f in fields(GenerationRequest)} - {"prompt", "seed", "preview_every"}


def load_quality_set(path: Path = QUALITY_SET) -> dict[str, Any]:
    """The quality set at ``path``; one with ``"base": FILE`` (beside it) takes what it lacks (prompts, seeds, gate) from FILE."""
    data = json.loads(Path(path).read_text())
    base = data.pop("base", None)
    return {**load_quality_set(Path(path).parent / base), **data} if base else data


@dataclass(frozen=True)
class Variant:
    """One track: its name, the request overrides that select it, and whether it is offered by default."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    default: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Variant":
        data = dict(data)
        name, default = data.pop("name"), bool(data.pop("default", False))
        unknown = sorted(set(data) - OVERRIDABLE)
        if unknown:
            raise ValueError(f"variant {name!r}: unknown request fields {unknown}; allowed: {', '.join(sorted(OVERRIDABLE))}")
        return cls(name, data, default)

    def request(self, prompt: str, seed: int) -> GenerationRequest:
        return GenerationRequest(prompt, seed=seed, **self.overrides)

    def precision(self, geometry: ModelGeometry) -> str:
        """The PRECISION track the server resolves for this variant (its override, else its tier's default)."""
        return self.overrides.get("precision") or geometry.defaults(self.overrides.get("preset") or DEFAULT_TIER)["PRECISION"]

    def denoiser_entries(self, geometry: ModelGeometry) -> list[str]:
        return geometry.tracks[self.precision(geometry)]


def family_variants(quality_set: dict[str, Any], family: str) -> tuple[Variant, list[Variant]]:
    """(reference, variants) that the quality set declares for ``family``."""
    tracks = quality_set["families"].get(family)
    if tracks is None:
        raise KeyError(f"the quality set declares no tracks for family {family!r}; it has: {', '.join(quality_set['families'])}")
    variants = [Variant.from_dict(v) for v in tracks["variants"]]
    names = [tracks["reference"]["name"], *(v.name for v in variants)]
    if len(set(names)) != len(names):
        raise ValueError(f"{family}: track names must be unique, got {names}")
    return Variant.from_dict(tracks["reference"]), variants
