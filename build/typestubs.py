#!/usr/bin/env python3
"""Install tensorrt-stubs into a directory for mypy (``make typecheck``), without the tensorrt it depends on.

    python build/typestubs.py .venv/typestubs      # then: MYPYPATH=.venv/typestubs mypy --config-file build/mypy.ini

tensorrt-stubs 10.13.0.35.1 declares a dependency on the real ``tensorrt`` wheel, whose libraries
come from pypi.nvidia.com (GPU hosts), and ships ``tensorrt/__init__.pyi`` without a ``py.typed``
marker (mypy skips it in site-packages; installed there it also turns ``import tensorrt`` into an
empty namespace package). So it goes, without dependencies, into its own directory handed to mypy
through MYPYPATH. Two generated signatures are not valid Python and stop mypy before it checks
anything; they are fixed here and nothing else is changed:

* plugin methods with a parameter named ``in`` (a keyword) -> ``in_``;
* ``INetworkDefinition.add_scale_nd``: ``channel_axis`` without a default after parameters with one.
"""

import re
import subprocess
import sys
from pathlib import Path

STUBS = "tensorrt-stubs==10.13.0.35.1"
FIXES = [
    (re.compile(r"\bin: list\["), "in_: list["),
    (re.compile(r"power: Weights = None, channel_axis: int\)"), "power: Weights = None, channel_axis: int = ...)"),
]


def main(target: Path) -> int:
    stub = target / "tensorrt_bindings" / "tensorrt.pyi"
    if not stub.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), STUBS], check=True
        )
    text = stub.read_text()
    for pattern, replacement in FIXES:
        text = pattern.sub(replacement, text)
    stub.write_text(text)
    print(f"{STUBS} in {target} (use MYPYPATH={target})")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".venv/typestubs")))
