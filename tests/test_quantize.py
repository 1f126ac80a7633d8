"""The quantized UNet tracks are explicit Q/DQ as TensorRT consumes it (INT8, FP8 in standard operators), shaped by the recipe (data), and measured."""

import contextlib
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from t2vserve.export import QUANTIZATION_REPORT
from t2vserve.families import get_family
from t2vserve.quality.report import evaluate, gate_failures, load_quality_set
from t2vserve.quality.variants import family_variants
from t2vserve.quantize import DEFAULT_RECIPE, Recipe

#: PRECISION track -> its denoiser entry (one expert).
UNET_TRACKS = {track: entries[0] for track, entries in get_family("unet3d").tracks().items()}


@pytest.fixture(scope="module")
def int8_model(repository) -> onnx.ModelProto:
    return onnx.load(str(repository / UNET_TRACKS["int8"] / "1" / "model.onnx"))


#: Ops between a weight's DequantizeLinear and its layer in ModelOpt's export (Linear weights are transposed).
PASS_THROUGH = ("Transpose", "Reshape", "Cast", "Identity")


def _weight_dequantizers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """DequantizeLinear nodes of int8 initializers (quantized weights), by the Conv/Gemm/MatMul they feed."""
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = {}
    for dq in model.graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or inits[dq.input[0]].data_type != onnx.TensorProto.INT8:
            continue
        frontier = list(dq.output)
        while frontier:
            for node in consumers.get(frontier.pop(), []):
                if node.op_type in PASS_THROUGH:
                    frontier.extend(node.output)
                else:
                    out[node.name] = dq
    return out


def test_int8_unet_is_explicit_qdq_with_per_channel_weights(int8_model) -> None:
    ops = [n.op_type for n in int8_model.graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 100
    inits = {i.name: numpy_helper.to_array(i) for i in int8_model.graph.initializer}
    dequantizers = _weight_dequantizers(int8_model)
    convs = [name for name in dequantizers if name.endswith("/Conv")]
    assert convs, "no quantized Conv weights"
    for name in convs:
        scale = inits[dequantizers[name].input[1]]
        weight = inits[dequantizers[name].input[0]]
        assert scale.ndim == 1 and scale.size == weight.shape[0], f"{name}: weight scale is not per output channel"
    # symmetric: every zero point is 0 (TensorRT requires it)
    for node in int8_model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            assert not np.any(inits[node.input[2]]), f"{node.name}: non-zero zero point"


def test_recipe_layers_stay_floating_point(int8_model) -> None:
    quantized = set(_weight_dequantizers(int8_model))
    float_layers = [n.name for n in int8_model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.name not in quantized]
    for must_keep in ("/unet/conv_in/Conv", "/unet/conv_out/Conv", "/unet/time_embedding/linear_1/Gemm"):
        assert must_keep in float_layers
    assert not any("time_emb_proj" in name for name in quantized)
    # the attention score path (Q K^T, softmax V) has no quantizer: its MatMuls read float activations only
    producers = {o: n for n in int8_model.graph.node for o in n.output}
    scores = [n for n in int8_model.graph.node if n.op_type == "MatMul" and "/attn" in n.name and n.name not in quantized]
    assert scores, "no attention score MatMuls found"
    for node in scores:
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input), node.name
    assert any("/resnets.0/conv1/Conv" in name for name in quantized)
    assert any("/attn1/to_q/MatMul" in name for name in quantized)


def test_recipe_is_data(components, tmp_path) -> None:
    """A different recipe file changes what is kept in floating point without any code change."""
    import torch

    from t2vserve.families.unet3d import CachedKVUNet
    from t2vserve.quantize import CalibrationSet, quantize_module

    data = json.loads(DEFAULT_RECIPE.read_text())
    data["keep_floating_point"].append({"pattern": "\\.temp_convs\\.", "why": "test"})
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    base, more = Recipe.load(), Recipe.load(path)
    assert more.keeps("unet.down_blocks.0.temp_convs.0.conv1") and not base.keeps("unet.down_blocks.0.temp_convs.0.conv1")
    assert Recipe.load(path).with_method("entropy").method == "entropy"
    with pytest.raises(ValueError, match="calibration method"):
        base.with_method("kl")
    module = CachedKVUNet(components.unet).eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 2, 8, 8, generator=generator)
    kv = torch.randn(2, 77, module.layout.width, generator=generator)
    calibration = CalibrationSet([(sample, torch.tensor([500.0, 500.0]), kv)])
    _, base_summary = quantize_module(module, base, calibration)
    _, more_summary = quantize_module(module, more, calibration)
    temp_convs = sum(1 for name, layer in module.named_modules() if ".temp_convs." in name and isinstance(layer, torch.nn.Conv3d))
    assert temp_convs > 0
    assert more_summary.kept_layers == base_summary.kept_layers + temp_convs
    assert more_summary.quantized_layers == base_summary.quantized_layers - temp_convs


def test_weight_sizes_are_reported(repository) -> None:
    report = json.loads((repository / UNET_TRACKS["int8"] / "1" / QUANTIZATION_REPORT).read_text())
    sizes = report["weight_bytes"]
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    assert report["calibration_samples"] > 0 and report["calibration_method"] == Recipe.load().method
    assert report["qdq"]["weights"] == report["quantized_layers"] > 100
    check = report["check"]  # the ONNX Runtime Q/DQ graph is as far from floating point as the quantized torch module
    assert 0.5 < check["mean_abs_onnxruntime_vs_float"] / check["mean_abs_quantized_vs_float"] < 1.5


def test_quality_gate_fast_subset(grpc_client, repository, geometry) -> None:
    """Two (prompt, seed) cases of the `make quality` set (a seen and a held-out combination) through the
    real server, against the same gate; the report's PSNR is checked against an independent computation."""
    from t2vserve.client import GenerationRequest

    quality_set = load_quality_set()
    reference, variants = family_variants(quality_set, "unet3d")
    seen = next(p for p in quality_set["prompts"] if not p["held_out"])
    held_out = next(p for p in quality_set["prompts"] if p["held_out"])
    subset = {**quality_set, "prompts": [seen, held_out], "seeds": quality_set["seeds"][:1]}
    report = evaluate(grpc_client, subset, repository)
    summary = report["summary"]["int8"]
    assert len(report["clips"]) == 2 * len(variants) and len(report["readings"]) == 2 * (1 + len(variants))
    seed = subset["seeds"][0]
    for entry, row in zip(subset["prompts"], [c for c in report["clips"] if c["variant"] == "int8"]):
        ref = grpc_client.generate(GenerationRequest(entry["prompt"], seed=seed, precision="fp16")).video
        int8 = grpc_client.generate(GenerationRequest(entry["prompt"], seed=seed, precision="int8")).video
        mse = np.mean((ref.astype(np.float64) - int8.astype(np.float64)) ** 2)
        assert row["psnr_db"] == pytest.approx(10 * np.log10(255.0**2 / mse), abs=1e-6)
    assert summary["mean_psnr_db"] == pytest.approx(np.mean([c["psnr_db"] for c in report["clips"] if c["variant"] == "int8"]))
    for r in report["readings"]:  # adherence rows compare the detector's reading with the prompt's attributes
        entry = subset["prompts"][0] if r["prompt"] == seen["prompt"] else held_out
        assert r["match"] == {**{k: r["reading"][k] == entry[k] for k in ("colour", "shape", "motion")},
                              "all": all(r["reading"][k] == entry[k] for k in ("colour", "shape", "motion"))}
    assert 0.2 < summary["weight_ratio"] < 0.5
    steps = geometry.presets.steps  # denoiser calls counted from Triton's statistics: one per step without the cache
    assert report["tracks"][reference.name]["denoiser_calls_per_clip"] == summary["denoiser_calls_per_clip"] == steps
    for variant in variants:
        calls = report["tracks"][variant.name]["denoiser_calls_per_clip"]
        track_steps = geometry.defaults(precision=variant.overrides.get("precision"))["STEPS"]  # a distilled student: its own
        assert calls < track_steps if variant.overrides.get("step_cache") else calls == track_steps, variant
    assert gate_failures(report) == [], summary


# --------------------------------------------------------------------------------------------------
# FP8 as standard Q/DQ, and graphs with external data (small modules: seconds)
# --------------------------------------------------------------------------------------------------
class _ConvLinear(torch.nn.Module):
    """A Conv and two Linear layers: the layer kinds the recipes quantize."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.up, self.down = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).flatten(2).transpose(1, 2)
        return self.down(torch.nn.functional.gelu(self.up(h)))


def _qdq_graph(tmp_path, fmt: str, threshold: int, stored: bool = True):
    """The small module quantized by ModelOpt, exported as Q/DQ ONNX and finished (external data above ``threshold``).

    ``stored``: weights exported as 8-bit values (``store_quantized_weights``, what export does), else as
    QuantizeLinear(float weight) folded afterwards by ``finish_qdq_graph``."""
    from t2vserve.onnx_export import export_graph
    from t2vserve.quantize import CalibrationSet, quantize_module
    from t2vserve.quantize.fp8_onnx import FP8_OPSET, standard_fp8_qdq
    from t2vserve.quantize.qdq import finish_qdq_graph, save_graph

    torch.manual_seed(0)
    module = _ConvLinear().eval()
    recipe = Recipe("test", fmt, (), 0 if fmt == "int8" else None, {"method": "max"})
    calibration = CalibrationSet([(torch.randn(2, 4, 6, 6),) for _ in range(2)])
    quantized, summary = quantize_module(module, recipe, calibration)
    if stored:
        from t2vserve.quantize.stored_weights import store_quantized_weights

        assert store_quantized_weights(quantized, fmt) == summary.quantized_layers
    path = tmp_path / fmt / "model.onnx"
    with standard_fp8_qdq() if fmt == "fp8" else contextlib.nullcontext():
        export_graph("small", quantized, {"x": torch.randn(2, 4, 6, 6)}, ["y"], {"x": {0: "b", 2: "h", 3: "w"}}, path,
                     opset=FP8_OPSET if fmt == "fp8" else 18)
    save_graph(onnx.load(str(path), load_external_data=False), path, path.parent, threshold)  # as a > 2 GB export arrives
    counts = finish_qdq_graph(path, threshold)
    return module, quantized, summary, path, counts


@pytest.mark.parametrize("stored", [True, False], ids=["stored-weights", "folded-weights"])
@pytest.mark.parametrize("fmt", ["fp8", "int8"])
def test_qdq_graph_is_standard_onnx_that_onnxruntime_runs(tmp_path, fmt: str, stored: bool) -> None:
    """Standard operators only (FP8: opset-19 Q/DQ with E4M3 zero points, no trt:: custom ops), 8-bit weight
    initializers feeding DequantizeLinear -> Conv/MatMul, external data, and the two-sided ONNX Runtime check."""
    from t2vserve.onnx_dynamo import unsupported_ops
    from t2vserve.quantize.qdq import weight_bytes
    from t2vserve.quantize.track import QDQ_ERROR_BAND, qdq_check

    module, quantized, summary, path, counts = _qdq_graph(tmp_path, fmt, threshold=0, stored=stored)
    assert (path.parent / "model.onnx.data").exists()  # weights as external data, one file
    model = onnx.load(str(path), load_external_data=False)
    assert unsupported_ops(model) == set()
    storage = onnx.TensorProto.FLOAT8E4M3FN if fmt == "fp8" else onnx.TensorProto.INT8
    inits = {i.name: i for i in model.graph.initializer}
    consumers = {i: n.op_type for n in model.graph.node for i in n.input}
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert counts == {"weights": 3, "activations": 3} == {"weights": summary.quantized_layers, "activations": len(weights)}
    assert all(inits[n.input[0]].data_type == storage for n in weights)
    linear_to = {"fp8": {"Conv", "MatMul"}, "int8": {"Conv", "Transpose"}}[fmt]  # FP8 weights are pre-transposed for MatMul
    assert {consumers[n.output[0]] for n in weights} == linear_to
    for node in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        assert inits[node.input[2]].data_type == storage
        if fmt == "fp8":
            assert {a.name: a.i for a in node.attribute}.get("saturate") == 1
    if fmt == "fp8":
        assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {19}
    sizes = weight_bytes(path)
    assert sizes["stored"] < 0.4 * sizes["fp32_equivalent"]
    check = qdq_check(module, quantized, path, {"x": torch.randn(3, 4, 5, 7)}, ["y"])
    assert QDQ_ERROR_BAND[0] < check["ratio"] < QDQ_ERROR_BAND[1], check
    assert check["max_abs_onnxruntime_vs_quantized"] < 0.05 * check["max_abs_quantized_vs_float"] + 1e-6, check


def test_inline_and_external_finishing_agree(tmp_path) -> None:
    """The same Q/DQ graph finished inline and through external data computes the same (ONNX Runtime)."""
    from t2vserve.onnx_export import onnxruntime_session

    _, _, _, external, _ = _qdq_graph(tmp_path / "external", "fp8", threshold=0, stored=False)
    _, _, _, inline, _ = _qdq_graph(tmp_path / "inline", "fp8", threshold=2**31 - 1, stored=False)
    assert not (inline.parent / "model.onnx.data").exists()
    x = {"x": np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)}
    (a,), (b,) = (onnxruntime_session(p).run(None, x) for p in (external, inline))
    np.testing.assert_array_equal(a, b)


def test_fp8_unet_is_standard_qdq_shaped_by_its_recipe(repository) -> None:
    report = json.loads((repository / UNET_TRACKS["fp8"] / "1" / QUANTIZATION_REPORT).read_text())
    model = onnx.load(str(repository / UNET_TRACKS["fp8"] / "1" / "model.onnx"))
    from t2vserve.onnx_dynamo import unsupported_ops

    assert unsupported_ops(model) == set() and report["format"] == "fp8" and report["check_passed"]
    fp8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT8E4M3FN and i.dims}
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    layers = {n.name: n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")}
    quantized = {name for name, n in layers.items() if any(dequantized.get(i) in fp8 for i in n.input)}
    assert len(quantized) == report["quantized_layers"] == report["qdq"]["weights"] > 100
    assert not {"/unet/conv_in/Conv", "/unet/conv_out/Conv"} & quantized and not any("time_emb" in n for n in quantized)
    assert report["weight_bytes"]["fp8"] < 0.4 * report["weight_bytes"]["fp32"]


def test_fp8_layer_with_an_all_zero_input_keeps_positive_scales(tmp_path) -> None:
    """A zero-initialized layer (diffusers' temporal convolutions, say) gives its successor an input range of 0:
    ModelOpt's FP8 fake quantization counts it as 1; so does the export (positive scales, no NaN under ONNX Runtime)."""
    from t2vserve.onnx_export import export_graph, onnxruntime_session
    from t2vserve.quantize import CalibrationSet, quantize_module
    from t2vserve.quantize.fp8_onnx import FP8_OPSET, standard_fp8_qdq

    module = _ConvLinear().eval()
    torch.nn.init.zeros_(module.conv.weight), torch.nn.init.zeros_(module.conv.bias)  # the Linear layers see zeros
    recipe = Recipe("test", "fp8", (), None, {"method": "max"})
    quantized, _ = quantize_module(module, recipe, CalibrationSet([(torch.randn(2, 4, 6, 6),)]))
    path = tmp_path / "model.onnx"
    with standard_fp8_qdq():
        export_graph("zero", quantized, {"x": torch.randn(1, 4, 6, 6)}, ["y"], {"x": {0: "b"}}, path, opset=FP8_OPSET)
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    scales = [inits[n.input[1]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert scales and all(np.all(s > 0) for s in scales)
    (out,) = onnxruntime_session(path).run(None, {"x": np.ones((1, 4, 6, 6), np.float32)})
    with torch.no_grad():
        np.testing.assert_allclose(out, quantized(torch.ones(1, 4, 6, 6)).numpy(), atol=1e-6)


def test_identical_e4m3_weights_keep_their_type(tmp_path) -> None:
    """Two zero-initialized layers have identical E4M3 weights: the TorchScript exporter stores one and routes the
    other through an Identity, which export reads through (graphsurgeon would fold it to UINT8: no E4M3 in numpy)."""
    from t2vserve.onnx_export import export_graph, onnxruntime_session
    from t2vserve.quantize import CalibrationSet, quantize_module
    from t2vserve.quantize.fp8_onnx import FP8_OPSET, standard_fp8_qdq
    from t2vserve.quantize.stored_weights import store_quantized_weights

    module = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)).eval()
    for layer in module[1:]:
        torch.nn.init.zeros_(layer.weight)
    quantized, _ = quantize_module(module, Recipe("test", "fp8", (), None, {"method": "max"}), CalibrationSet([(torch.randn(4, 16),)]))
    store_quantized_weights(quantized, "fp8")
    path = tmp_path / "model.onnx"
    with standard_fp8_qdq():
        export_graph("twins", quantized, {"x": torch.randn(2, 16)}, ["y"], {"x": {0: "b"}}, path, opset=FP8_OPSET)
    model = onnx.load(str(path))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    weights = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weights) == 3 and set(weights) == {onnx.TensorProto.FLOAT8E4M3FN}
    (out,) = onnxruntime_session(path).run(None, {"x": np.ones((1, 16), np.float32)})
    with torch.no_grad():
        np.testing.assert_allclose(out, quantized(torch.ones(1, 16)).numpy(), atol=1e-6)
