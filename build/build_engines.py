#!/usr/bin/env python3
"""Build the TensorRT plans of the engine slots from their ONNX, skipping up-to-date ones (or --check them).

See ``python build/build_engines.py --help`` and build/README.md; the implementation is
t2vserve/engines_cli.py (the command line), t2vserve/engines.py (pure) and t2vserve/tensorrt_builder.py (the TensorRT calls).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from t2vserve.engines_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
