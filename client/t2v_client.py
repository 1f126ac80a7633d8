#!/usr/bin/env python3
"""Command-line client for the t2v ensemble (gRPC or HTTP). ``--help`` lists every parameter.

The implementation is t2vserve/client.py (importable as a library: T2VClient, GenerationRequest).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from t2vserve.client import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
