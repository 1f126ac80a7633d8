"""Command-line helpers of ``python -m t2vserve.train`` and its ``distill`` mode: flags from a config dataclass, logging."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from typing import Any


def dataclass_flags(parser: argparse.ArgumentParser, config: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of the dataclass ``config`` (default None: the dataclass's own default)."""
    for f in fields(config):
        if f.name not in skip:
            flag = "--" + f.name.replace("_", "-")
            if isinstance(f.default, bool):
                parser.add_argument(flag, action="store_true", default=None)
            else:
                parser.add_argument(flag, type=type(f.default), default=None)


def given(args: argparse.Namespace, config: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dataclass fields given on the command line, by name."""
    return {f.name: getattr(args, f.name) for f in fields(config) if f.name not in skip and getattr(args, f.name) is not None}


def quiet_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
