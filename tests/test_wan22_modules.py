"""Wan2.2 torch modules: each equals the diffusers WanPipeline computation it replaces, and each exports
with the dynamo exporter to an opset-18 graph that ONNX Runtime runs on other shapes (max error 1e-4)."""

from __future__ import annotations

import copy
import json

import onnx
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from onnx import helper
from transformers import AutoTokenizer

from t2vserve import onnx_dynamo, onnx_export
from t2vserve.families.wan22_modules import (
    CachedKVTransformer,
    KVProjector,
    TextEncoderGraph,
    VaeDecoderGraph,
    clean_prompt,
    experts_kv_layout,
    kv_layout,
)
from t2vserve.families.wan22_tiny import (
    BOUNDARY_RATIO,
    TEXT_MAX_LENGTH,
    TINY_TRANSFORMER_CONFIG,
    build_tiny_model,
    train_tokenizer,
)

PROMPTS = [
    "a red panda eating bamboo in a misty forest, cinematic lighting",
    "  an astronaut &amp;amp; a horse\n\ton the   moon  ",
    "&lt;b&gt;Waves\x1c crashing\u3000at night",
    "",
    "a cat playing the piano " * 120,  # longer than 512 tokens: truncated
]
TEMPORAL = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("wan22") / "tiny-wan22", seed=0, experts=1)


@pytest.fixture(scope="module")
def pipe(model_dir) -> WanPipeline:
    return WanPipeline.from_pretrained(str(model_dir))


@pytest.fixture(scope="module")
def transformer(pipe):
    return pipe.transformer.eval()


@pytest.fixture(scope="module")
def vae(pipe):
    """A copy: ``VaeDecoderGraph`` switches its upsampling mode, the pipeline's VAE stays stock."""
    return copy.deepcopy(pipe.vae)


def _inputs(batch: int, frames: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 48, frames, height, width, generator=g)
    timestep = torch.randint(0, 1000, (batch,), generator=g).float()
    text = torch.randn(batch, TEXT_MAX_LENGTH, TINY_TRANSFORMER_CONFIG["text_dim"], generator=g)
    return sample, timestep, text


# --------------------------------------------------------------------------------------------------
# Tiny model and tokenizer
# --------------------------------------------------------------------------------------------------
def test_tokenizer_reloads_as_t5(model_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    assert type(tokenizer).__name__ == "T5Tokenizer"
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.model_max_length == TEXT_MAX_LENGTH
    text = "a red panda eating bamboo in a misty forest, cinematic lighting"
    ids = tokenizer(text).input_ids
    assert ids[-1] == 1 and 0 not in ids and 2 not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert 2 in tokenizer("Zebra").input_ids  # outside the corpus' alphabet: <unk>
    padded = tokenizer(text, padding="max_length", max_length=TEXT_MAX_LENGTH).input_ids
    assert padded[: len(ids)] == ids and set(padded[len(ids) :]) == {0}


def test_tiny_model_reloads_with_one_and_two_experts(model_dir, tmp_path) -> None:
    one = WanPipeline.from_pretrained(str(model_dir))
    assert one.transformer_2 is None and one.config.expand_timesteps and one.config.boundary_ratio is None
    assert one.vae.config.z_dim == 48 == len(one.vae.config.latents_mean) == len(one.vae.config.latents_std)
    assert isinstance(one.scheduler, UniPCMultistepScheduler)
    assert one.scheduler.config.prediction_type == "flow_prediction" and one.scheduler.config.flow_shift == 5.0

    two_dir = build_tiny_model(tmp_path / "a14b", seed=0, experts=2)
    index = json.loads((two_dir / "model_index.json").read_text())
    assert index["transformer_2"] == ["diffusers", "WanTransformer3DModel"] and index["boundary_ratio"] == BOUNDARY_RATIO
    two = WanPipeline.from_pretrained(str(two_dir))
    assert isinstance(two.transformer_2, WanTransformer3DModel) and not two.config.expand_timesteps
    assert two.config.boundary_ratio == BOUNDARY_RATIO
    w1, w2 = two.transformer.proj_out.weight, two.transformer_2.proj_out.weight
    assert not torch.equal(w1, w2)  # two experts, two random inits


def test_build_is_deterministic(model_dir, tmp_path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    weights = "diffusion_pytorch_model.safetensors"
    for rel in ["tokenizer/tokenizer.json", "text_encoder/model.safetensors", f"transformer/{weights}", f"vae/{weights}"]:
        assert (again / rel).read_bytes() == (model_dir / rel).read_bytes(), rel
    assert (other / "transformer" / weights).read_bytes() != (again / "transformer" / weights).read_bytes()
    assert train_tokenizer().get_vocab() == train_tokenizer().get_vocab()


# --------------------------------------------------------------------------------------------------
# Text encoder
# --------------------------------------------------------------------------------------------------
def test_clean_prompt_matches_diffusers() -> None:
    for text in PROMPTS + ["\u00a0x\u2028y\x1f z \x1d", "&amp;lt;tag&amp;gt;"]:
        assert clean_prompt(text) == prompt_clean(text), repr(text)


def test_text_encoder_graph_matches_encode_prompt(pipe) -> None:
    cleaned = [clean_prompt(p) for p in PROMPTS]
    ids = pipe.tokenizer(cleaned, padding="max_length", max_length=TEXT_MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    graph = TextEncoderGraph(pipe.text_encoder, pipe.tokenizer.pad_token_id).eval()
    with torch.no_grad():
        ours = graph(ids)
        reference, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=TEXT_MAX_LENGTH)
    assert ours.shape == reference.shape == (len(PROMPTS), TEXT_MAX_LENGTH, 32)
    assert (ours - reference).abs().max().item() <= 1e-6
    assert ours[3, 1:].abs().max() == 0  # the empty prompt is one token (</s>), the rest zero


# --------------------------------------------------------------------------------------------------
# Packed K/V
# --------------------------------------------------------------------------------------------------
def test_kv_layout_covers_every_cross_attention(transformer) -> None:
    layout = kv_layout(transformer)
    assert [layer.name for layer in layout.layers] == [f"blocks.{i}.attn2" for i in range(len(transformer.blocks))]
    assert all((layer.heads, layer.head_dim) == (2, 16) for layer in layout.layers)
    assert layout.width == 2 * 32 * len(transformer.blocks)
    text = torch.randn(2, 7, 32)
    with torch.no_grad():
        kv = KVProjector(transformer)(text)
        context = transformer.condition_embedder.text_embedder(text)
        for layer, block in zip(layout.layers, transformer.blocks):
            start, inner = layer.offset, layer.inner_dim
            key, value = kv[..., start : start + inner], kv[..., start + inner : start + 2 * inner]
            assert torch.equal(key, block.attn2.norm_k(block.attn2.to_k(context)))
            assert torch.equal(value, block.attn2.to_v(context))


def test_image_cross_attention_is_refused() -> None:
    with pytest.raises(NotImplementedError, match="add_k_proj"):
        kv_layout(WanTransformer3DModel(**{**TINY_TRANSFORMER_CONFIG, "image_dim": 16, "added_kv_proj_dim": 16}))


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (4, 2, 6, 10)])
def test_cached_kv_transformer_matches_stock(transformer, shape) -> None:
    sample, timestep, text = _inputs(*shape, seed=shape[0])
    batch, frames, height, width = shape
    expanded = timestep[:, None].expand(batch, frames * (height // 2) * (width // 2))  # expand_timesteps (TI2V-5B)
    cached = CachedKVTransformer(transformer)
    with torch.no_grad():
        ours = cached(sample, timestep, KVProjector(transformer)(text))
        stock = transformer(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]
        stock_expanded = transformer(sample, expanded, encoder_hidden_states=text, return_dict=False)[0]
    assert ours.shape == sample.shape
    assert (ours - stock).abs().max().item() <= 1e-4
    assert (ours - stock_expanded).abs().max().item() <= 1e-5
    assert cached.holder.kv is None


def test_only_kv_changes_the_output(transformer) -> None:
    sample, timestep, text = _inputs(2, 2, 4, 4, seed=7)
    cached, projector = CachedKVTransformer(transformer), KVProjector(transformer)
    with torch.no_grad():
        kv = projector(text)
        first, again = cached(sample, timestep, kv), cached(sample, timestep, kv.clone())
        other = cached(sample, timestep, projector(text + 1.0))
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_two_experts_each_read_their_own_kv(transformer) -> None:
    """A14B: each expert has its own text embedder and K/V projections; the packed tensor carries both."""
    second = copy.deepcopy(transformer)
    with torch.no_grad():
        for param in second.parameters():
            param.add_(0.05 * torch.randn_like(param))
    sample, timestep, text = _inputs(2, 2, 4, 4, seed=11)
    layout = experts_kv_layout([("transformer", transformer), ("transformer_2", second)])
    with torch.no_grad():
        kv = KVProjector(transformer, second)(text)
        assert kv.shape[-1] == layout.width == 2 * kv_layout(transformer).width
        assert layout.layers[-1].name.startswith("transformer_2.blocks.")
        first = CachedKVTransformer(transformer, kv_slice="head")(sample, timestep, kv)
        last = CachedKVTransformer(second, kv_slice="tail")(sample, timestep, kv)
        stock_first = transformer(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]
        stock_last = second(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]
    assert (first - stock_first).abs().max().item() <= 1e-4
    assert (last - stock_last).abs().max().item() <= 1e-4
    assert (stock_first - stock_last).abs().max().item() > 1e-2  # the experts differ: reading the wrong K/V would show


# --------------------------------------------------------------------------------------------------
# VAE decoder
# --------------------------------------------------------------------------------------------------
def _upsample_modes(model: torch.nn.Module) -> set[str]:
    return {m.mode for m in model.modules() if isinstance(m, torch.nn.Upsample)}


def test_vae_graph_matches_pipeline_decode(pipe, vae) -> None:
    kwargs = dict(prompt="a red panda", height=64, width=96, num_frames=9, num_inference_steps=2)
    latents = pipe(**kwargs, generator=torch.Generator().manual_seed(3), output_type="latent").frames
    video = pipe(**kwargs, generator=torch.Generator().manual_seed(3), output_type="pt").frames  # [1, F, 3, H, W] in [0, 1]
    graph = VaeDecoderGraph(vae)
    assert _upsample_modes(pipe.vae) == {"nearest-exact"} and _upsample_modes(graph) == {"nearest"}
    with torch.no_grad():
        frames = graph(latents)
    assert latents.shape == (1, 48, 3, 4, 6) and frames.shape == (9, 3, 64, 96)
    assert (frames / 2 + 0.5).clamp(0, 1).sub(video[0]).abs().max().item() <= 1e-6


def test_vae_is_causal_in_time(vae) -> None:
    latents = torch.randn(1, 48, 3, 2, 2, generator=torch.Generator().manual_seed(5))
    graph = VaeDecoderGraph(vae)
    with torch.no_grad():
        base = graph(latents)
        for frame in (1, 2):
            changed = latents.clone()
            changed[:, :, frame] += 1.0
            out = graph(changed)
            first = 1 + TEMPORAL * (frame - 1)  # first output frame that latent frame may reach
            assert torch.equal(out[:first], base[:first])
            assert (out[first:] - base[first:]).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_vae_padding_to_max_frames_is_exact(vae) -> None:
    latents = torch.randn(1, 48, 4, 2, 4, generator=torch.Generator().manual_seed(6))
    direct, padded = VaeDecoderGraph(vae), VaeDecoderGraph(vae, max_latent_frames=3)
    with torch.no_grad():
        for frames in (1, 2, 3):
            want, got = direct(latents[:, :, :frames]), padded(latents[:, :, :frames])
            assert got.shape == want.shape == (1 + TEMPORAL * (frames - 1), 3, 32, 64)
            assert (got - want).abs().max().item() <= 1e-5
        with pytest.raises(ValueError, match="at most 3"):
            padded(latents)


# --------------------------------------------------------------------------------------------------
# Dynamo ONNX export
# --------------------------------------------------------------------------------------------------
LATENT_AXES = {0: "batch", 2: "latent_frames", 3: "latent_height", 4: "latent_width"}
VAE_MAX_LATENT_FRAMES = 2


def _ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    ids = torch.randint(3, 200, (batch, seq), generator=torch.Generator().manual_seed(seed))
    for row in range(batch):  # prompt lengths 1..seq, eos last, then padding
        length = 1 + (row * 5) % seq
        ids[row, length - 1], ids[row, length:] = 1, 0
    return ids


def _graph_case(name: str, pipe) -> tuple[torch.nn.Module, dict, list[dict], list[str], dict]:
    """module, example inputs, inputs of other sizes (including the smallest), output names, dynamic axes."""
    transformer = pipe.transformer.eval()
    if name == "text_encoder":
        axes = {"INPUT_IDS": {0: "batch", 1: "seq"}, "TEXT_EMBEDS": {0: "batch", 1: "seq"}}
        module = TextEncoderGraph(pipe.text_encoder, pipe.tokenizer.pad_token_id)
        other = [{"INPUT_IDS": _ids(3, 40, 1)}, {"INPUT_IDS": _ids(1, 1, 2)}]
        return module, {"INPUT_IDS": _ids(2, 16, 0)}, other, ["TEXT_EMBEDS"], axes
    if name == "kv_projector":
        axes = {"TEXT_EMBEDS": {0: "batch", 1: "seq"}, "KV": {0: "batch", 1: "seq"}}
        other = [{"TEXT_EMBEDS": torch.randn(3, 40, 32)}, {"TEXT_EMBEDS": torch.randn(1, 1, 32)}]
        return KVProjector(transformer), {"TEXT_EMBEDS": torch.randn(2, 16, 32)}, other, ["KV"], axes
    if name == "transformer":
        axes = {"SAMPLE": LATENT_AXES, "TIMESTEP": {0: "batch"}, "KV": {0: "batch", 1: "seq"}, "NOISE_PRED": LATENT_AXES}
        cases = []
        for seed, (shape, seq) in enumerate([((2, 3, 8, 8), 16), ((4, 2, 6, 10), 24), ((1, 1, 2, 2), 1)]):
            sample, timestep, _ = _inputs(*shape, seed=seed)
            cases.append({"SAMPLE": sample, "TIMESTEP": timestep, "KV": torch.randn(shape[0], seq, 128)})
        return CachedKVTransformer(transformer), cases[0], cases[1:], ["NOISE_PRED"], axes
    axes = {
        "LATENTS": {2: "latent_frames", 3: "latent_height", 4: "latent_width"},
        "FRAMES": {0: "frames", 2: "height", 3: "width"},
    }
    module = VaeDecoderGraph(copy.deepcopy(pipe.vae), max_latent_frames=VAE_MAX_LATENT_FRAMES)
    other = [{"LATENTS": torch.randn(1, 48, 1, 2, 6)}, {"LATENTS": torch.randn(1, 48, 2, 6, 2)}]
    return module, {"LATENTS": torch.randn(1, 48, 2, 4, 4)}, other, ["FRAMES"], axes


@pytest.mark.parametrize("name", ["text_encoder", "kv_projector", "transformer", "vae_decoder"])
def test_dynamo_export_matches_torch_on_other_shapes(pipe, tmp_path, name: str) -> None:
    module, example, others, outputs, axes = _graph_case(name, pipe)
    path = onnx_dynamo.export_dynamo(module, example, outputs, axes, tmp_path / "model.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert onnx_dynamo.unsupported_ops(model) == set()
    assert "RMSNormalization" not in {node.op_type for node in model.graph.node}
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 18)]
    for tensor in [*model.graph.input, *model.graph.output]:
        dims = tensor.type.tensor_type.shape.dim
        assert {axis: dims[axis].dim_param for axis in axes[tensor.name]} == axes[tensor.name], tensor.name
    for inputs in others:
        error = onnx_dynamo.compare_with_onnxruntime(module, path, inputs, outputs)
        shapes = [tuple(v.shape) for v in inputs.values()]
        assert error <= 1e-4, f"{name} on {shapes}: max |onnxruntime - torch| = {error:.2e}"


def test_large_weights_go_to_external_data(transformer, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1024)
    module = KVProjector(transformer)
    axes = {"TEXT_EMBEDS": {0: "batch", 1: "seq"}}
    path = onnx_dynamo.export_dynamo(module, {"TEXT_EMBEDS": torch.randn(2, 8, 32)}, ["KV"], axes, tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx.data").stat().st_size > 1024
    assert onnx_dynamo.compare_with_onnxruntime(module, path, {"TEXT_EMBEDS": torch.randn(3, 5, 32)}, ["KV"]) <= 1e-4


def test_unsupported_ops_flags_rms_normalization_and_custom_domains() -> None:
    nodes = [
        helper.make_node("RMSNormalization", ["x", "scale"], ["y"]),
        helper.make_node("FusedMatMul", ["y", "y"], ["z"], domain="com.microsoft"),
        helper.make_node("Relu", ["z"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1)])
    assert onnx_dynamo.unsupported_ops(model) == {"RMSNormalization", "com.microsoft::FusedMatMul"}


def test_export_forms_equal_the_transformer_and_rope(transformer) -> None:
    """exportable(): plain-ops RMS norms, a RoPE indexed by arange (no data-dependent slicing: the torch 2.11
    torch.export blocker), a self-attention without in-place RoPE stores: the same output, to float32 rounding (bit-equal
    on the CI's CPU; 3.6e-7 on an output of magnitude 1.5 on another x86 CPU, whose kernels sum in another order)."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    from t2vserve.families.wan22_export import IndexedRotaryPosEmbed, PlainRMSNorm, PlainRopeAttnProcessor, exportable

    stock = CachedKVTransformer(transformer)
    export = exportable(CachedKVTransformer(copy.deepcopy(transformer)))
    modules = list(export.modules())
    assert not any(isinstance(m, (torch.nn.RMSNorm, WanRotaryPosEmbed)) for m in modules)
    assert any(isinstance(m, PlainRMSNorm) for m in modules) and any(isinstance(m, IndexedRotaryPosEmbed) for m in modules)
    assert all(isinstance(b.attn1.processor, PlainRopeAttnProcessor) for b in export.transformer.blocks)
    for seed, shape in enumerate([(2, 3, 8, 8), (1, 1, 2, 2), (3, 2, 6, 10)]):
        sample, timestep, text = _inputs(*shape, seed=seed)
        kv = KVProjector(transformer)(text)
        with torch.no_grad():
            torch.testing.assert_close(export(sample, timestep, kv), stock(sample, timestep, kv), rtol=1e-6, atol=1e-6, msg=str(shape))
            for a, b in zip(transformer.rope(sample), export.transformer.rope(sample)):
                assert torch.equal(a, b)


def test_torchscript_export_of_the_export_form_runs_on_other_shapes(transformer, tmp_path) -> None:
    """The path of the quantized transformer (TorchScript, where ModelOpt's quantizers become Q/DQ): the
    export form traces to a graph that ONNX Runtime runs on shapes other than the example's."""
    from t2vserve.families.wan22_export import exportable

    _, example, others, outputs, axes = _graph_case("transformer", type("Pipe", (), {"transformer": transformer})())
    module = exportable(CachedKVTransformer(copy.deepcopy(transformer)))
    path = onnx_export.export_graph("transformer", module, example, outputs, axes, tmp_path / "model.onnx")
    for inputs in others:
        assert onnx_dynamo.compare_with_onnxruntime(module, path, inputs, outputs) <= 1e-4, [tuple(v.shape) for v in inputs.values()]
