#!/usr/bin/env python3
"""Export a text-to-video model (tiny demo or local diffusers weights) into model_repository/.

See ``python export/export_onnx.py --help``; the implementation is t2vserve/export.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from t2vserve.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
