"""Model families. Each module exposes build_tiny_model, load_components, geometry and engine_graphs."""

from __future__ import annotations

from types import ModuleType

from . import unet3d

FAMILIES: dict[str, ModuleType] = {unet3d.FAMILY: unet3d}


def get_family(name: str) -> ModuleType:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None
