"""The committed model repository is what spec generates, and its wiring is consistent."""

import re

import onnx

import pytest

from t2vserve.families import FAMILIES, get_family
from t2vserve.repository import (
    ENSEMBLE_STEPS,
    RUNNER_PARAMETERS,
    demo_components,
    ensemble_inputs,
    foreign_entries,
    render_repository,
    slot_tensors,
    stale_files,
    write_repository,
)
from t2vserve.server import DEFAULT_MODEL_REPOSITORY, MODEL_CONFIGS
from t2vserve.spec import FRAMES, PARAMETERS, POSTPROCESS_INSTANCES, SCHEDULER_INSTANCES, STREAM_MODEL


def test_committed_configs_equal_generated() -> None:
    """The committed repository is the shipped demo model's layout (with its student's entry once it has one)."""
    optional = demo_components()
    assert stale_files(DEFAULT_MODEL_REPOSITORY, optional=optional) == [], "run: python -m t2vserve.repository --write"
    assert foreign_entries(DEFAULT_MODEL_REPOSITORY, optional=optional) == []


def test_an_optional_slot_gets_an_entry_only_where_the_model_has_its_component(tmp_path) -> None:
    """unet_distilled (the distilled student) is served only by a model directory with unet_distilled/."""
    (slot,) = [s for s in get_family("unet3d").slots() if s.component]
    assert (slot.name, slot.component) == ("unet_distilled", "unet_distilled")
    assert f"{slot.name}/config.pbtxt" not in render_repository("unet3d")
    with_student = render_repository("unet3d", optional={slot.component})
    assert 'platform: "tensorrt_plan"' in with_student[f"{slot.name}/config.pbtxt"]
    assert set(with_student) - set(render_repository("unet3d")) == {f"{slot.name}/{rel}" for rel in (
        "config.pbtxt", *(f"configs/{c.name}.pbtxt" for c in MODEL_CONFIGS if c.name), "1/model.py")}
    write_repository(tmp_path, "unet3d", optional={slot.component})
    with pytest.raises(FileExistsError, match="unet_distilled"):  # Triton would load the student's entry without its model
        write_repository(tmp_path, "unet3d")


FAMILY_LAYOUTS = [(name, experts) for name in sorted(FAMILIES) for experts in (1, 2) if not (name == "unet3d" and experts == 2)]


@pytest.mark.parametrize("family,experts", FAMILY_LAYOUTS)
def test_engine_slots_have_tensorrt_default_and_runner_configs(family: str, experts: int) -> None:
    files = render_repository(family, experts, get_family(family).optional_components(experts))
    for slot in get_family(family).slots(experts):
        config = files[f"{slot.name}/config.pbtxt"]
        assert 'platform: "tensorrt_plan"' in config
        assert f"max_batch_size: {slot.max_batch}" in config
        for runner in RUNNER_PARAMETERS:
            text = files[f"{slot.name}/configs/{runner}.pbtxt"]
            # a track the runner has no kernels for (int8 under torch) is an entry that refuses requests
            served = not (runner == "torch" and slot.quantized_format == "int8")
            assert 'backend: "python"' in text and f'string_value: "{runner if served else "unavailable"}"' in text
            assert ("dynamic_batching" in text) == (slot.max_batch > 0)
    tracks = get_family(family).tracks(experts)
    assert "preprocess/configs/onnxruntime.pbtxt" not in files  # every track
    torch_tracks = re.search(r'key: "tracks" value: \{ string_value: "([^"]*)" \}', files["preprocess/configs/torch.pbtxt"]).group(1)
    assert torch_tracks.split(",") == [track for track in tracks if track != "int8"]


def _effective(files: dict[str, str], entry: str, name: str | None) -> str:
    """The config Triton loads for ``entry`` under --model-config-name ``name``: configs/<name>.pbtxt, else config.pbtxt."""
    return files.get(f"{entry}/configs/{name}.pbtxt") or files[f"{entry}/config.pbtxt"]


def _instances(config: str) -> tuple[str, int]:
    kind, count = re.search(r"instance_group \[ \{ kind: (\w+) count: (\d+) \} \]", config).groups()
    return kind, int(count)


@pytest.mark.parametrize("family,experts", FAMILY_LAYOUTS)
def test_the_sampling_loops_are_gpu_instances_exactly_in_the_gpu_config_sets(family: str, experts: int) -> None:
    """scheduler and t2v_stream: KIND_GPU with TensorRT (config.pbtxt) and the torch runner on CUDA (torch), KIND_CPU
    with ONNX Runtime and the torch runner on the CPU (torch-cpu, the launcher's choice without CUDA: Triton refuses
    KIND_GPU there); every other Python entry KIND_CPU; the engine slots have a config in every named set."""
    files = render_repository(family, experts, get_family(family).optional_components(experts))
    python = [name for name in files if name.endswith("/1/model.py") and "runner" not in files[name]]
    assert {"torch", "torch-cpu", "onnxruntime"} <= {config.name for config in MODEL_CONFIGS}
    for config in MODEL_CONFIGS:
        for path in python:
            entry = path.split("/")[0]
            kind, count = _instances(_effective(files, entry, config.name))
            loop = entry in ("scheduler", STREAM_MODEL)
            assert kind == ("KIND_GPU" if loop and config.gpu else "KIND_CPU"), (config.name, entry)
            assert count == {"scheduler": SCHEDULER_INSTANCES, "postprocess": POSTPROCESS_INSTANCES}.get(entry, 1)
        for slot in get_family(family).slots(experts):
            text = _effective(files, slot.name, config.name)
            assert ('platform: "tensorrt_plan"' in text) == (config.runner == "tensorrt"), (config.name, slot.name)
            if config.runner == "torch" and "unavailable" not in text:
                device = "auto" if config.gpu else "cpu"
                assert f'key: "device" value: {{ string_value: "{device}" }}' in text
    assert "scheduler/configs/torch.pbtxt" not in files  # the same as config.pbtxt: Triton falls back to it
    assert _effective(files, "preprocess", "torch-cpu") == files["preprocess/configs/torch.pbtxt"]  # int8 refused there too


@pytest.mark.parametrize("family,experts", FAMILY_LAYOUTS)
def test_the_decoder_slot_hands_postprocess_uint8_frames(family: str, experts: int) -> None:
    files = render_repository(family, experts)
    frames = f'{{ name: "{FRAMES}" data_type: TYPE_UINT8 dims: [ -1, -1, -1, 3 ] }}'
    for config in MODEL_CONFIGS:
        assert frames in _effective(files, "vae_decoder", config.name)
    assert frames in files["postprocess/config.pbtxt"]


def test_a_repository_of_another_family_is_refused(tmp_path) -> None:
    """Exporting wan22 over a unet3d repository would leave entries Triton tries to load: refused."""
    write_repository(tmp_path, "unet3d")
    assert foreign_entries(tmp_path, "wan22") == ["unet", "unet_fp8", "unet_int8"]
    with pytest.raises(FileExistsError, match="unet, unet_fp8, unet_int8"):
        write_repository(tmp_path, "wan22")


def test_ensemble_tensors_are_produced_before_use() -> None:
    available = {t.name for t in ensemble_inputs()}
    for model, inputs, outputs in ENSEMBLE_STEPS:
        missing = [v for k, v in inputs.items() if v not in available and not _optional(k)]
        assert not missing, f"{model} reads {missing} before any step produces them"
        available |= set(outputs.values())
    config = render_repository()["t2v/config.pbtxt"]
    outputs = re.search(r"output \[(.*?)\]\n", config, re.S).group(1)
    for name in re.findall(r'name: "(\w+)"', outputs):
        assert name in available


def _optional(name: str) -> bool:
    return any(t.name == name and t.optional for t in ensemble_inputs())


def test_every_request_parameter_reaches_preprocess() -> None:
    """Triton checks only how many required inputs a request has: a required PROMPT let a request without
    it (but with STEPS) stall the ensemble. All inputs are optional to Triton; preprocess names what is missing."""
    files = render_repository()
    for entry in ("t2v", "preprocess"):
        inputs = re.search(r"input \[(.*?)\]\n", files[f"{entry}/config.pbtxt"], re.S).group(1).strip().splitlines()
        assert len(inputs) == len(PARAMETERS) and all("optional: true" in line for line in inputs), entry
    assert [p.name for p in PARAMETERS if not p.optional] == ["PROMPT"]  # tests/test_server.py: refused by preprocess


def test_engine_configs_match_exported_onnx(repository, geometry) -> None:
    for declared_slot in get_family(geometry.family).slots_of(geometry):
        slot, (inputs, outputs) = declared_slot.name, slot_tensors(declared_slot)
        model = onnx.load(str(repository / slot / "1" / "model.onnx"), load_external_data=False)
        assert [i.name for i in model.graph.input] == [t.name for t in inputs]
        assert [o.name for o in model.graph.output] == [t.name for t in outputs]
        for declared, actual in zip(inputs + outputs, list(model.graph.input) + list(model.graph.output)):
            assert len(declared.dims) == len(actual.type.tensor_type.shape.dim), f"{slot}.{declared.name} rank"


@pytest.mark.parametrize("family,experts", FAMILY_LAYOUTS)
def test_a_deployment_serves_the_tracks_it_names(family: str, experts: int) -> None:
    """``export --tracks``: the other tracks' denoiser entries load nothing in every config set (no plan, no module,
    no compile) and refuse requests naming PRECISION; preprocess lists the served tracks; the rest is unchanged."""
    from t2vserve.repository import not_deployed_reason, served_tracks
    from t2vserve.spec import QUANTIZED_TRACKS

    tracks = get_family(family).tracks(experts)
    present = served_tracks(family, experts, None)  # the tracks whose entries this layout has
    keep = next(t for t in served_tracks(family, experts, "torch") if t not in QUANTIZED_TRACKS)  # full precision: every set serves it
    dropped = [track for track in present if track != keep]
    full, only = render_repository(family, experts), render_repository(family, experts, tracks=[keep])
    left_out = {e for track in dropped for e in tracks[track]}
    assert left_out and set(only) <= set(full)
    for config in MODEL_CONFIGS:
        for entry in left_out:
            text = _effective(only, entry, config.name)
            assert 'key: "runner" value: { string_value: "unavailable" }' in text and not_deployed_reason([keep]) in text
        for entry in tracks[keep]:
            assert _effective(only, entry, config.name) == _effective(full, entry, config.name)
        assert f'key: "tracks" value: {{ string_value: "{keep}" }}' in _effective(only, "preprocess", config.name)
    assert {rel: text for rel, text in only.items() if rel.split("/")[0] not in left_out | {"preprocess"}} == \
        {rel: text for rel, text in full.items() if rel.split("/")[0] not in left_out | {"preprocess"}}


def test_the_batcher_delay_is_set_for_the_denoisers_and_the_loops_barrier_and_nothing_else(tmp_path, capsys) -> None:
    """``python -m t2vserve.batcher_delay --denoiser-queue-delay-us`` (and ``bench served --queue-delay-us``) rewrites the
    dynamic batcher of the batched entries (the denoisers) and the sampling loops' step barrier window, in every
    config set; the other entries' configs stay as generated; a delay out of range is refused naming the flag."""
    from t2vserve.batcher_delay import main, set_queue_delay
    from t2vserve.spec import DENOISER_QUEUE_DELAY_US, STEP_BARRIER_PARAMETER

    def window(us: int) -> str:
        return f'key: "{STEP_BARRIER_PARAMETER}" value: {{ string_value: "{us}" }}'

    files = render_repository("unet3d")
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    with pytest.raises(ValueError, match=r"--denoiser-queue-delay-us: -1 is out of range; allowed \[0, 1000000\]"):
        set_queue_delay(tmp_path, -1)
    with pytest.raises(SystemExit):
        main(["--repository", str(tmp_path / "empty"), "--denoiser-queue-delay-us", "0"])
    assert "no entry with a dynamic batcher" in capsys.readouterr().err
    assert main(["--repository", str(tmp_path), "--denoiser-queue-delay-us", "0"]) == 0
    changed = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    batched = {relative for relative, text in files.items() if f"max_queue_delay_microseconds: {DENOISER_QUEUE_DELAY_US}" in text}
    loops = {relative for relative, text in files.items() if window(DENOISER_QUEUE_DELAY_US) in text}
    assert set(changed) == batched | loops and any(p.startswith("unet/") for p in changed) and any(p.startswith("scheduler/") for p in loops)
    for relative, text in files.items():
        now = (tmp_path / relative).read_text()
        expected = text.replace(f"max_queue_delay_microseconds: {DENOISER_QUEUE_DELAY_US}", "max_queue_delay_microseconds: 0")
        assert now == expected.replace(window(DENOISER_QUEUE_DELAY_US), window(0))


def test_a_served_variant_restates_the_batcher_delay() -> None:
    """``bench --also-served``: each variant names its settings; the batcher delay defaults to the generated one,
    since a variant before it may have rewritten the repository's configs; an unknown key is refused."""
    from t2vserve.bench import served_variant
    from t2vserve.spec import DENOISER_QUEUE_DELAY_US

    assert served_variant("poll=0+gpumetrics=0") == {"queue_delay_us": DENOISER_QUEUE_DELAY_US, "gpu_poll_s": 0.0, "gpu_metrics": 0}
    assert served_variant("delay=0") == {"queue_delay_us": 0}
    with pytest.raises(ValueError, match="delay, poll, gpumetrics"):
        served_variant("batch=4")
