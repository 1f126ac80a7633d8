"""`make demo`'s program end to end: export, embedded server, one clip over gRPC, timings, MP4."""

import subprocess
import sys

from t2vserve.server import REPO_ROOT
from t2vserve.spec import PRESETS
from t2vserve.video import decode_mp4


def test_demo_writes_playable_mp4_and_prints_stage_timings(tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "demo.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "t2vserve.demo", "--repository", str(tmp_path / "repo"), "--tiny-dir", str(tiny_model_dir), "--out", str(out), "--num-frames", "6",
         "--calibration-prompts", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    frames, fps = decode_mp4(out.read_bytes())
    assert len(frames) == 6 and fps == PRESETS["tiny"].fps
    for stage in ("export ONNX", "start tritonserver", "request over gRPC", "unet_int8", "vae_decoder", "postprocess"):
        assert stage in done.stdout
    assert f"wrote {out}: 6 frames" in done.stdout
    # the detector's reading of the default prompt's clip, next to what the prompt asks for
    for row in ("colour     red", "shape      circle", "motion     right"):  # what the prompt asks for
        assert row in done.stdout
    assert "colour     red         red  ok" in done.stdout  # colour: 92 % of seen prompts in docs/quality.md
    assert "random weights" not in done.stdout  # the trained demo model served
    png = out.with_suffix(".png")
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
