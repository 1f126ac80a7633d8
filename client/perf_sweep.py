#!/usr/bin/env python3
"""perf_analyzer concurrency sweep of the t2v ensemble, written as a markdown table.

See ``python client/perf_sweep.py --help``; the implementation is t2vserve/perf.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from t2vserve.perf import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
