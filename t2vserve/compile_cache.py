"""Fill torch.compile's on-disk cache for a repository's torch-runner entries: one process per entry and batch size, all at once.

A torch-runner entry compiles one graph per batch size before it is READY (``TorchRunner.warm_up``): about
2.5 minutes per size for the ModelScope UNet on an H200, one size after another, one entry after another.
Compiling is mostly CPU work, so graphs compiled side by side in their own processes fill the cache in the
time of the slowest (GPU memory permitting: each process holds the module and runs one batch); a server (or a benchmark) started afterwards with the same ``T2V_COMPILE_CACHE_DIR``
loads the kernels (about 25 s a size) instead of compiling them:

    T2V_COMPILE_CACHE_DIR=/var/cache/t2v python -m t2vserve.compile_cache model_repository --entries unet,unet_fp8

``--sizes`` limits the batch sizes (default: each entry's compiled sizes, as the server warms up). The warm-up
shape is the one export wrote into each entry's ``source.json`` (``export_model(warmup_size=...)``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .settings import COMPILE_CACHE_ENV, compile_cache_environment

log = logging.getLogger("t2vserve.compile_cache")


def warm_entry(repository: Path, entry: str, runner: str = "torch", sizes: tuple[int, ...] = ()) -> dict[str, Any]:
    """Build ``entry``'s runner as the server does (its ``configs/<runner>.pbtxt``) and run its warm-up; seconds per size."""
    from .bench.common import runner_config
    from .runners import make_runner

    config = runner_config(repository, entry, runner)
    if sizes:
        config.setdefault("parameters", {})["compiled_batch_sizes"] = {"string_value": ",".join(map(str, sizes))}
    start = time.perf_counter()
    model = make_runner(config["parameters"]["runner"]["string_value"], repository / entry / "1", config)
    loaded = time.perf_counter() - start
    warm = getattr(model, "warm_up", None)
    seconds = warm() if warm else {}
    return {"entry": entry, "kernels": model.kernels, "load_s": loaded, "warm_up_s": seconds}


def entry_sizes(repository: Path, entry: str, runner: str = "torch") -> tuple[int, ...]:
    """The batch sizes the server warms ``entry`` up at (its config's ``compiled_batch_sizes``, else the runner's
    default for its max batch size and one request's rows); () for an entry without batching."""
    from .bench.common import runner_config
    from .runners import SOURCE_FILE, compiled_batch_sizes

    config = runner_config(repository, entry, runner)
    listed = config.get("parameters", {}).get("compiled_batch_sizes", {}).get("string_value", "")
    if listed:
        return tuple(sorted(int(s) for s in listed.split(",") if s))
    source = json.loads((repository / entry / "1" / SOURCE_FILE).read_text())
    return compiled_batch_sizes(int(config.get("max_batch_size", 0)), int(source.get("request_batch", 2)))


def fill(repository: Path, entries: list[str], runner: str = "torch", sizes: tuple[int, ...] = (), log_dir: Path | None = None) -> list[dict[str, Any]]:
    """Warm every (entry, batch size) in its own process at once (``sizes``: these only; default each entry's own);
    each process's JSON result, or its exit status and log tail."""
    env = {**os.environ, **compile_cache_environment(), "PYTHONUNBUFFERED": "1"}
    log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
    jobs = [(entry, size) for entry in entries for size in (sizes or entry_sizes(repository, entry, runner) or (0,))]
    procs = []
    for entry, size in jobs:
        command = [sys.executable, "-m", "t2vserve.compile_cache", str(repository), "--entries", entry, "--runner", runner, "--in-process"]
        command += ["--sizes", str(size)] if size else []
        path = log_dir / f"compile-cache-{entry}-b{size}.log"
        with open(path, "w") as out:
            procs.append((entry, path, subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)))
        log.info("warming %s at batch %s (pid %d)", entry, size or "-", procs[-1][2].pid)
    results = []
    for entry, path, proc in procs:
        code = proc.wait()
        text = path.read_text(errors="replace")
        line = next((line for line in reversed(text.splitlines()) if line.startswith("{")), None)
        results.append(json.loads(line) if code == 0 and line else {"entry": entry, "exit": code, "log_tail": text[-2000:]})
        log.info("%s: %s", entry, results[-1])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--entries", required=True, help="comma-separated repository entries (e.g. unet,unet_fp8)")
    parser.add_argument("--runner", default="torch")
    parser.add_argument("--sizes", default="", help="batch sizes to compile, e.g. 2 (default: each entry's own)")
    parser.add_argument("--in-process", action="store_true", help="warm the single entry in this process (what each worker runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not os.environ.get(COMPILE_CACHE_ENV):
        log.warning("%s is unset: the kernels go to torch's default cache under /tmp", COMPILE_CACHE_ENV)
    entries = [e for e in args.entries.split(",") if e]
    sizes = tuple(int(s) for s in args.sizes.split(",") if s)
    if args.in_process:
        os.environ.update(compile_cache_environment())
        print(json.dumps(warm_entry(args.repository, entries[0], args.runner, sizes)), flush=True)
        return 0
    results = fill(args.repository, entries, args.runner, sizes)
    print(json.dumps(results, indent=1))
    return 0 if all("exit" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
