#!/usr/bin/env python3
"""Benchmarks (CPU `make bench`, GPU parts through the device tool); the implementation is t2vserve/bench.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from t2vserve.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
