"""The command-line client against the real server: success, plain errors, unreachable server."""

import subprocess
import sys

from t2vserve.server import REPO_ROOT, free_port
from t2vserve.video import decode_mp4

CLIENT = [sys.executable, str(REPO_ROOT / "client" / "t2v_client.py")]


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLIENT + list(args), capture_output=True, text=True, timeout=300)


def test_cli_writes_mp4_over_grpc_and_http_with_a_progress_bar(server, tmp_path) -> None:
    previews = tmp_path / "previews"
    for protocol, url, extra in (("grpc", server.grpc_url, ["--previews", str(previews)]), ("http", server.http_url, [])):
        out = tmp_path / f"{protocol}.mp4"
        done = run_client("--protocol", protocol, "--url", url, "--prompt", "a cat", "--seed", "3", "--steps", "2",
                          "--num-frames", "5", "--fps", "10", "--out", str(out), *extra)
        assert done.returncode == 0, done.stderr
        frames, fps = decode_mp4(out.read_bytes())
        assert len(frames) == 5 and fps == 10
        assert f"wrote {out}" in done.stdout and "seed 3" in done.stdout
        # not a terminal: one progress line per denoising step
        assert [line.split("] ")[1].split(",")[0] for line in done.stderr.splitlines()] == ["step 1/2", "step 2/2"]
    assert sorted(p.name for p in previews.iterdir()) == ["step-001.png", "step-002.png"]


def test_cli_reports_invalid_parameter_plainly(server, tmp_path) -> None:
    done = run_client("--url", server.grpc_url, "--prompt", "a cat", "--steps", "500", "--out", str(tmp_path / "x.mp4"))
    assert done.returncode == 2
    assert "error:" in done.stderr and "STEPS: 500 is out of range; allowed [1, 100]" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x.mp4").exists()


def test_cli_reports_unreachable_server(tmp_path) -> None:
    done = run_client("--protocol", "http", "--url", f"localhost:{free_port()}", "--prompt", "a cat", "--out", str(tmp_path / "x.mp4"))
    assert done.returncode == 3
    assert "cannot reach Triton" in done.stderr and "Traceback" not in done.stderr
