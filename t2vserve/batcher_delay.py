"""The denoisers' dynamic-batcher delay of an exported repository: ``python -m t2vserve.batcher_delay``.

The generated configs hold ``spec.DENOISER_QUEUE_DELAY_US``: a lone request waits that long for a partner, so
concurrent requests' steps share a batch, and the sampling loops' step barrier window (``t2vserve.step_barrier``,
config parameter ``spec.STEP_BARRIER_PARAMETER``) is the same value; both are rewritten together. A latency-first
deployment sets 0 (the barrier off too), and concurrent requests then batch less. A re-export writes the
generated delay again unless it is given the same flag (``python -m t2vserve.export ... --denoiser-queue-delay-us 0``);
the compose ``engines`` service's reuse of an export keeps the delay the configs hold (``current_queue_delay``).

    python -m t2vserve.batcher_delay --repository model_repository --denoiser-queue-delay-us 0
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .settings import DEFAULT_MODEL_REPOSITORY
from .spec import DENOISER_QUEUE_DELAY_RANGE_US, DENOISER_QUEUE_DELAY_US, STEP_BARRIER_PARAMETER

_DELAY = re.compile(r"max_queue_delay_microseconds: \d+")
_WINDOW = re.compile(rf'(key: "{STEP_BARRIER_PARAMETER}" value: {{ string_value: ")\d+(")')


def _configs(repository: Path) -> list[Path]:
    return sorted([*repository.glob("*/config.pbtxt"), *repository.glob("*/configs/*.pbtxt")])


def current_queue_delay(repository: Path) -> int | None:
    """The denoisers' batcher delay in ``repository``'s configs as they are (None: no entry with a dynamic batcher)."""
    for path in _configs(repository):
        found = _DELAY.search(path.read_text())
        if found:
            return int(found.group().rpartition(" ")[2])
    return None


def check_queue_delay(microseconds: int) -> None:
    """ValueError naming the flag ``--denoiser-queue-delay-us`` (here and in export) where ``microseconds`` is out of range."""
    if not DENOISER_QUEUE_DELAY_RANGE_US.contains(microseconds):
        raise ValueError(f"--denoiser-queue-delay-us: {microseconds} is out of range; allowed {DENOISER_QUEUE_DELAY_RANGE_US.describe()}")


def set_queue_delay(repository: Path, microseconds: int) -> list[str]:
    """Rewrite ``max_queue_delay_microseconds`` in every config of ``repository`` (the batched entries: the
    denoisers) and the sampling loops' step barrier window; the configs changed, relative to ``repository``."""
    check_queue_delay(microseconds)
    changed = []
    for path in _configs(repository):
        text = path.read_text()
        new = _WINDOW.sub(rf"\g<1>{microseconds}\g<2>", _DELAY.sub(f"max_queue_delay_microseconds: {microseconds}", text))
        if new != text:
            path.write_text(new)
            changed.append(str(path.relative_to(repository)))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--denoiser-queue-delay-us", type=int, required=True, metavar="US",
                        help=f"default {DENOISER_QUEUE_DELAY_US}; 0: latency first; allowed {DENOISER_QUEUE_DELAY_RANGE_US.describe()}")
    args = parser.parse_args(argv)
    if not any(_DELAY.search(path.read_text()) for path in _configs(args.repository)):
        parser.error(f"--repository {args.repository}: no entry with a dynamic batcher (export a model there first)")
    try:
        changed = set_queue_delay(args.repository, args.denoiser_queue_delay_us)
    except ValueError as exc:
        parser.error(str(exc))
    for config in changed:
        print(f"{config}: {args.denoiser_queue_delay_us} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
