"""``make soak`` (python -m t2vserve.bench.soak): a short real run on its own loopback tritonserver."""

from __future__ import annotations

import json

from t2vserve.bench import soak
from t2vserve.settings import LOOPBACK


def test_soak_reports_requests_latency_and_server_memory(repository, tmp_path, capsys) -> None:
    out = tmp_path / "soak.json"
    argv = ["--duration", "6", "--concurrency", "2", "--steps", "1", "--sample-every", "1"]
    code = soak.main(argv + ["--model-repository", str(repository), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())

    assert all(url.startswith(f"{LOOPBACK}:") for url in report["config"]["urls"].values())  # loopback only
    total = report["total"]
    assert total["requests"] >= 2 and total["failures"] == 0 and report["failures_by_message"] == {}
    assert 0 < total["p50_s"] <= total["p99_s"] < 60
    assert set(report["by_protocol"]) == {"grpc", "http"} and all(p["requests"] for p in report["by_protocol"].values())

    points = report["points"]
    assert [p["point"] for p in points] == ["start", "middle", "end"]
    assert points[0]["elapsed_s"] == 0 and points[0]["requests"] is None
    assert points[1]["requests"] + points[2]["requests"] == total["requests"]
    assert 2.5 < points[1]["elapsed_s"] < 4.5 and points[2]["elapsed_s"] >= 6
    # tritonserver plus one stub process per Python-backend instance (4 scheduler instances among them), none lost
    for point in points:
        assert point["server_rss_bytes"] > 10 * 2**20
        assert point["stub_count"] == points[0]["stub_count"] >= 10
        assert point["stubs_rss_bytes"] > point["stub_count"] * 10 * 2**20
        assert point["total_rss_bytes"] == point["server_rss_bytes"] + point["stubs_rss_bytes"]
        assert {"scheduler", "preprocess", "postprocess", "unet"} <= set(point["stub_rss_bytes_by_model"])
    assert report["rss_growth_bytes"] == points[2]["total_rss_bytes"] - points[0]["total_rss_bytes"]
    assert len(report["memory_samples"]) >= 3

    table = out.with_suffix(".md").read_text()
    assert table == soak.table(report) and table in printed
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["start", "middle", "end", "total"]
