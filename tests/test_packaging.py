"""An installed t2vserve has every data file it reads: the wheel built from this tree carries t2vserve/data/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from t2vserve.export import TRAINED_DIR
from t2vserve.quality.report import QUALITY_SET
from t2vserve.quantize import DATA_DIR, DEFAULT_RECIPE
from t2vserve.safety import find_filter_file
from t2vserve.settings import REPO_ROOT
from t2vserve.spec import SAFETY_FILTER_FILE
from t2vserve.tiny_tokenizer import CORPUS

PACKAGE = REPO_ROOT / "t2vserve"


def _build_wheel(tmp_path: Path) -> set[str]:
    """Names in the wheel built offline (no build isolation, no index) from a copy of the sources."""
    source = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info/ into the tree it builds
    shutil.copytree(PACKAGE, source / "t2vserve", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    command += ["-w", str(tmp_path / "dist"), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("t2vserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_carries_every_data_file(tmp_path) -> None:
    names = _build_wheel(tmp_path)
    packaged = lambda path: f"t2vserve/{Path(path).relative_to(PACKAGE).as_posix()}"  # noqa: E731
    on_disk = {packaged(p) for p in DATA_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(on_disk - names) == [], "pyproject.toml [tool.setuptools.package-data] misses these"
    recipe = json.loads(DEFAULT_RECIPE.read_text())
    read_by_code = [DEFAULT_RECIPE, DATA_DIR / recipe["calibration"]["prompts_file"], CORPUS]
    read_by_code += [QUALITY_SET, find_filter_file(SAFETY_FILTER_FILE, tmp_path)]  # the quality set, preprocess's filter
    read_by_code += [p for p in TRAINED_DIR.rglob("*") if p.is_file()]
    assert len(read_by_code) > 10 and sorted(packaged(p) for p in read_by_code if packaged(p) not in names) == []
    assert "t2vserve/triton_models/runner.py" in names and "t2vserve/families/unet3d.py" in names
