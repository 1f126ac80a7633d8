"""Fetch the wheels a bare GPU machine lacks for client/gpu_bench.sh and pack them into carry folders.

The device tool carries at most 64 MiB per call, the working tree included, so the wheels go in several
folders (``.whl1``, ``.whl2``, ...; git-ignored), each installed with ``bash client/gpu_bench.sh install
.whlN`` in its own call on the same warm machine. ``nvidia-pytriton`` is slimmed first: its Python
backend stubs and the bundled libpython for interpreters other than the GPU machine's (3.12) are
dropped, with their RECORD lines, which takes the wheel from 53 to about 38 MiB.

    python client/gpu_wheels.py --budget-mib 48      # -> .whl1 .whl2 ... (prints the folders)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

#: What client/gpu_bench.sh imports that the GPU machine's image lacks (pinned as in pyproject.toml).
WHEELS = ["nvidia-pytriton==0.7.0", "diffusers==0.42.1", "tritonclient==2.73.0", "python-rapidjson==1.25",
          "av==16.1.0", "numpy==1.26.4", "perf-analyzer==2.60.0", "grpcio==1.85.3", "transformers==5.23.0",
          "tokenizers==0.23.3"]
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_35_x86_64",
             "manylinux_2_38_x86_64", "any"]
PYTHON = "3.12"


def download(target: Path) -> list[Path]:
    """pip download of WHEELS for the GPU machine's interpreter (binary wheels only, no dependencies)."""
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                    PYTHON, *platforms, "-d", str(target), *WHEELS], check=True)
    return sorted(target.glob("*.whl"))


def slim_pytriton(wheel: Path, python: str = PYTHON) -> Path:
    """Rewrite the nvidia-pytriton wheel without other interpreters' stubs and bundled libpython."""
    keep_stub = f"python_backend_stubs/{python}/"

    def dropped(name: str) -> bool:
        other_stub = "python_backend_stubs/" in name and keep_stub not in name
        return other_stub or bool(re.search(r"nvidia_pytriton\.libs/libpython3-[0-9a-f]+\.\d+\.so", name))

    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            if dropped(info.filename):
                continue
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True) if not dropped(line.split(",")[0])).encode()
            out.writestr(info, data)
    slim.replace(wheel)
    return wheel


def pack(wheels: list[Path], budget: int, root: Path) -> list[Path]:
    """First-fit decreasing into folders of at most ``budget`` bytes each."""
    bins: list[tuple[int, list[Path]]] = []
    for wheel in sorted(wheels, key=lambda w: -w.stat().st_size):
        size = wheel.stat().st_size
        if size > budget:
            raise SystemExit(f"{wheel.name} ({size / 2**20:.1f} MiB) is larger than --budget-mib")
        for index, (used, members) in enumerate(bins):
            if used + size <= budget:
                bins[index] = (used + size, [*members, wheel])
                break
        else:
            bins.append((size, [wheel]))
    folders = []
    for index, (_, members) in enumerate(bins, 1):
        folder = root / f".whl{index}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for wheel in members:
            shutil.copy2(wheel, folder / wheel.name)
        folders.append(folder)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-mib", type=float, default=48.0, help="per folder: 64 MiB less the working tree")
    parser.add_argument("--cache", type=Path, default=Path(".whl-cache"))
    parser.add_argument("--root", type=Path, default=Path("."))
    args = parser.parse_args()
    args.cache.mkdir(exist_ok=True)
    wheels = download(args.cache)
    for wheel in wheels:
        if wheel.name.startswith("nvidia_pytriton-"):
            slim_pytriton(wheel)
    for folder in pack(wheels, int(args.budget_mib * 2**20), args.root):
        size = sum(w.stat().st_size for w in folder.iterdir()) / 2**20
        print(f"{folder}  {size:.1f} MiB  {' '.join(sorted(w.name.split('-')[0] for w in folder.iterdir()))}")


if __name__ == "__main__":
    main()
