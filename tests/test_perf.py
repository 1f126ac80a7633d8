"""perf_analyzer recipe: input data from spec, perf_analyzer's CSV -> table, the sweep against a stand-in binary."""

from __future__ import annotations

import json
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from t2vserve import perf
from t2vserve.repository import ensemble_inputs
from t2vserve.spec import PARAMETERS

# perf_analyzer -f output (columns of perf_analyzer 2.x; latencies in microseconds, rows sorted by throughput)
PA_CSV = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait
1,0.081,52,1260,31,402,12305118,1208,12,12310022,12402017,12431540,12450003,12320410,0,12320000
4,0.196,60,1301,8201455,420,12200321,1190,15,20402115,21950003,22010000,22500120,20391044,0,20390000
2,0.142,55,1290,1903212,410,12210004,1201,13,14050000,14300410,14350000,14410000,14061422,0,14061000
"""


def test_parse_perf_csv_sorts_by_concurrency_and_converts_to_seconds() -> None:
    rows = perf.parse_perf_csv(PA_CSV)
    assert [r.concurrency for r in rows] == [1, 2, 4]
    first = rows[0]
    assert first.throughput == pytest.approx(0.081)
    assert (first.p50_s, first.p90_s, first.p99_s) == pytest.approx((12.310022, 12.402017, 12.450003))
    assert first.avg_s == pytest.approx(12.32041)


def test_parse_perf_csv_of_older_perf_analyzer_and_junk() -> None:
    old = "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n3,2.5,1,2,3,4,5,1000000,2000000,2500000,3000000\n"
    (row,) = perf.parse_perf_csv(old)
    assert (row.concurrency, row.p99_s, row.avg_s) == (3, 3.0, None)
    with pytest.raises(ValueError, match="p99 latency"):
        perf.parse_perf_csv("Concurrency,Inferences/Second,p50 latency\n1,1,1\n")


def test_markdown_table() -> None:
    table = perf.markdown_table(perf.parse_perf_csv(PA_CSV), "t2v sweep")
    lines = table.splitlines()
    assert lines[0] == "t2v sweep"
    assert lines[2] == "| concurrency | throughput (clips/s) | p50 latency (s) | p90 latency (s) | p99 latency (s) |"
    assert lines[4:] == [
        "| 1 | 0.081 | 12.31 | 12.40 | 12.45 |",
        "| 2 | 0.142 | 14.05 | 14.30 | 14.41 |",
        "| 4 | 0.196 | 20.40 | 21.95 | 22.50 |",
    ]


def test_input_data_uses_ensemble_inputs_with_their_types() -> None:
    data = perf.input_data("fp16", STEPS=10, GUIDANCE_SCALE=7.5)["data"]
    assert len(data) == len(perf.PROMPTS) and len({entry["SEED"][0] for entry in data}) == len(data)
    names = {t.name for t in ensemble_inputs()}
    required = {p.name for p in PARAMETERS if not p.optional}
    for entry in data:
        assert set(entry) <= names and required <= set(entry)
        assert entry["PRECISION"] == ["fp16"] and entry["STEPS"] == [10] and entry["GUIDANCE_SCALE"] == [7.5]
        assert all(isinstance(v, list) and len(v) == 1 for v in entry.values())  # every input is [1]
    with pytest.raises(ValueError, match="not an input"):
        perf.input_data("int8", STEP=10)
    with pytest.raises(ValueError, match="STEPS must be int"):
        perf.input_data("int8", STEPS="10")
    with pytest.raises(ValueError, match="precision"):
        perf.input_data("fp4")
    assert {p.name for p in PARAMETERS} == names


def test_committed_input_data_is_generated() -> None:
    for name, content in perf.committed_inputs().items():
        path = perf.PERF_DIR / name
        assert path.exists(), "run: python -m t2vserve.perf --write-inputs client/perf"
        assert json.loads(path.read_text()) == content, (
            f"{path} is stale: python -m t2vserve.perf --write-inputs client/perf"
        )


FAKE_PERF_ANALYZER = """\
#!{python}
# Stand-in for perf_analyzer: checks the measurement flags, writes a CSV row for the requested concurrency.
import sys
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1]
assert opt("-m") == "t2v" and opt("--measurement-mode") == "count_windows", args
low, high = opt("--concurrency-range").split(":")
assert low == high, args
c = int(low)
assert int(opt("--measurement-request-count")) >= 2 * c, args
open(opt("--input-data")).read()
with open(opt("-f"), "w") as f:
    f.write("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
            "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\\n")
    f.write(f"{{c}},{{0.1 * c}},1,2,3,4,5,6,7,{{c * 1000000}},{{c * 2000000}},{{c * 2500000}},{{c * 3000000}}\\n")
"""


def test_sweep_runs_perf_analyzer_per_concurrency_and_writes_the_table(tmp_path) -> None:
    binary = tmp_path / "perf_analyzer"
    binary.write_text(FAKE_PERF_ANALYZER.format(python=sys.executable))
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "perf.md"
    code = perf.main(
        [
            "--perf-analyzer",
            str(binary),
            "--url",
            "triton:8001",
            "--concurrency",
            "1,2,4",
            "--csv-dir",
            str(tmp_path / "csv"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = out.read_text().splitlines()[-3:]
    assert rows == [
        "| 1 | 0.100 | 1.00 | 2.00 | 3.00 |",
        "| 2 | 0.200 | 2.00 | 4.00 | 6.00 |",
        "| 4 | 0.400 | 4.00 | 8.00 | 12.00 |",
    ]
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["perf_c1.csv", "perf_c2.csv", "perf_c4.csv"]


def test_sweep_stops_on_a_failed_run(tmp_path) -> None:
    binary = tmp_path / "perf_analyzer"
    binary.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        sys.exit(99)
        """)
    )
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(RuntimeError, match="exited with 99 at concurrency 1"):
        perf.main(["--perf-analyzer", str(binary), "--out", str(tmp_path / "perf.md")])
    assert not (tmp_path / "perf.md").exists()


def test_window_scales_with_concurrency() -> None:
    assert [perf.window_requests(c) for c in (1, 2, 4, 8)] == [4, 4, 8, 16]
    command = perf.perf_analyzer_command("pa", "h:8001", Path("in.json"), 8, Path("o.csv"))
    assert command[command.index("--measurement-request-count") + 1] == "16"
