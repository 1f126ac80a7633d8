"""The GPU bench's probes, run on the CPU against the tiny repository (the GPU runs them at full size)."""

from __future__ import annotations

from t2vserve.bench import step_ramp


def test_step_ramp_times_the_denoiser_call_lone_and_back_to_back(repository) -> None:
    """Each configuration gets a lone call's launch and synchronised times and the back-to-back mean; the profile
    lists functions by their own CPU time, most first: on the CPU, eagerly, the module's torch operators lead."""
    results = step_ramp.measure(repository, "cpu", (2, 4), also_guards="inputs")
    timings = results["timings"]
    assert list(timings)[0] == "one compiled size" and any(name.endswith("differentiating guards only") for name in timings)
    assert list(timings)[-1] == "one compiled size, compile_guards inputs" and results["compile_guards"] == "all"
    for row in timings.values():
        assert 0 < row["launch_ms"] <= row["synchronised_ms"] and row["pipelined_ms"] > 0
    own = [row["own_ms_per_call"] for row in results["profile"]]
    assert own and own == sorted(own, reverse=True)
    assert results["profile"][0]["function"].startswith("~:0(<built-in method torch"), results["profile"][0]
