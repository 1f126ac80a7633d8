"""The family registry: the one place that names the model families.

Everything else reaches a family through ``get_family(name)`` (or ``family_of(preset)``), so adding
a family means one new module here plus its tests.
"""

from __future__ import annotations

from ..spec import PRESETS
from .base import Family
from .unet3d import FAMILY as UNET3D
from .wan22 import FAMILY as WAN22

FAMILIES: dict[str, Family] = {family.name: family for family in (UNET3D, WAN22)}
DEFAULT_FAMILY = UNET3D.name


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


def family_of(preset: str) -> Family:
    """The family a preset belongs to."""
    try:
        return get_family(PRESETS[preset].family)
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}") from None
