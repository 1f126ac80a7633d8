"""The tiny random-initialised Wan2.2 model: toy widths, Wan2.2's architecture, a project-made tokenizer.

Same layout as the real checkpoints (diffusers ``WanPipeline``): a UMT5 text encoder, the
Wan2.2 z48 VAE (residual blocks, patch size 2, 16x spatial and 4x temporal compression), one
``WanTransformer3DModel`` (TI2V-5B style, ``expand_timesteps``) or two experts with a
``boundary_ratio`` (A14B style). Nothing is downloaded: the T5-style Unigram tokenizer is learned
from ``t2vserve/data/tokenizer_corpus.txt``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

CORPUS = Path(__file__).resolve().parent.parent / "data" / "tokenizer_corpus.txt"
#: T5's special tokens at T5's ids: <pad> 0, </s> 1, <unk> 2.
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]
TOKENIZER_VOCAB_SIZE = 256  # the corpus supports at most 284 pieces
#: Wan's text length (``WanPipeline``'s ``max_sequence_length``) and the tokenizer's model_max_length.
TEXT_MAX_LENGTH = 512
Z_DIM = 48

TINY_TEXT_CONFIG: dict[str, Any] = {
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
    "d_kv": 8,
    "d_ff": 64,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.0,
}
TINY_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": Z_DIM,
    "out_channels": Z_DIM,
    "text_dim": TINY_TEXT_CONFIG["d_model"],
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
#: The trained demo model's transformer (``Wan22Family.training_variant``), same layout (TI2V-5B style, patch 2).
#: The plumbing model's (width 32, 49 k parameters) cannot learn the shapes world; each token emits a 2x2 patch of
#: the z48 latents, 192 values, so a width below that bottlenecks the output: on the CPU, width 64 stayed at loss
#: 1.2 with motion at chance, 192 and 256 fell to 0.50 / 0.37 and followed colour and motion (docs/bench/train-wan22-cpu.md).
TRAINED_TRANSFORMER_CONFIG: dict[str, Any] = {
    **TINY_TRANSFORMER_CONFIG,
    "num_attention_heads": 8,
    "attention_head_dim": 32,
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 4,
}
TINY_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 8,
    "decoder_base_dim": 16,
    "z_dim": Z_DIM,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 16,
    # Fixed "random-ish" statistics in the ranges of the real z48 VAE's.
    "latents_mean": [round(0.5 * math.sin(1.7 * i), 4) for i in range(Z_DIM)],
    "latents_std": [round(0.8 + 0.4 * math.cos(0.9 * i), 4) for i in range(Z_DIM)],
}
#: Wan2.1's z16 VAE at toy widths (8x spatial, 4x temporal, no patching): what the real Wan2.2-T2V-A14B ships.
Z16_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "latents_mean": [round(0.3 * math.sin(1.3 * i), 4) for i in range(16)],
    "latents_std": [round(1.0 + 0.5 * math.cos(0.7 * i), 4) for i in range(16)],
}
#: Wan2.2's scheduler: UniPC on flow-matching sigmas.
SCHEDULER_CONFIG: dict[str, Any] = {
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 5.0,
    "num_train_timesteps": 1000,
    "solver_order": 2,
}
#: A14B: the high-noise expert runs while t >= boundary_ratio * num_train_timesteps.
BOUNDARY_RATIO = 0.875


def train_tokenizer(vocab_size: int = TOKENIZER_VOCAB_SIZE) -> Any:
    """A ``T5Tokenizer`` (tokenizers-backed Unigram, T5's pre-tokenizer and ids) learned from the project's corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    learner = Tokenizer(models.Unigram())
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    learner.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), metaspace])  # T5's
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="<unk>")
    learner.train_from_iterator(CORPUS.read_text(encoding="utf-8").splitlines(), trainer)
    learned = json.loads(learner.to_str())["model"]["vocab"]
    if [piece for piece, _ in learned[:3]] != SPECIAL_TOKENS:
        raise AssertionError(f"special tokens not at T5's ids: {learned[:3]}")
    # The trainer is not bit-reproducible (parallel float sums; characters it re-adds get 1e-4-spaced
    # scores in hash-map order): quantise the scores and sort, so a build is deterministic.
    pieces = sorted(((piece, round(score, 3)) for piece, score in learned[3:]), key=lambda p: (-p[1], p[0]))
    specials = [(piece, float(score)) for piece, score in learned[:3]]
    return T5Tokenizer(vocab=specials + pieces, extra_ids=0, model_max_length=TEXT_MAX_LENGTH)


def save_tiny_tokenizer(directory: Path) -> Any:
    """Learn the tokenizer, save it (``save_pretrained``) and return it as ``AutoTokenizer`` reloads it."""
    from transformers import AutoTokenizer

    train_tokenizer().save_pretrained(str(directory))
    return AutoTokenizer.from_pretrained(str(directory))


def build_tiny_model(out_dir: Path, seed: int = 0, experts: int = 1, transformer: dict[str, Any] | None = None,
                     vae: dict[str, Any] | None = None) -> Path:
    """Save a tiny random ``WanPipeline`` to ``out_dir``: TI2V-5B style (experts=1, ``expand_timesteps``)
    or A14B style (experts=2: ``transformer_2`` and ``boundary_ratio``). Deterministic per seed.

    ``transformer`` / ``vae``: other configurations than ``TINY_TRANSFORMER_CONFIG`` / ``TINY_VAE_CONFIG``
    (the trained demo model's: ``TRAINED_TRANSFORMER_CONFIG``). By default both layouts use the z48 VAE; the
    real A14B ships Wan2.1's z16 VAE (8x spatial, no patching: ``Z16_VAE_CONFIG``), so code reading these
    models takes channels and factors from the configs, never from constants here.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    if experts not in (1, 2):
        raise ValueError(f"experts must be 1 or 2, not {experts}")
    out_dir = Path(out_dir)
    vae = vae or TINY_VAE_CONFIG
    transformer = {**(transformer or TINY_TRANSFORMER_CONFIG), "in_channels": vae["z_dim"], "out_channels": vae["z_dim"]}
    tokenizer = save_tiny_tokenizer(out_dir / "tokenizer")
    torch.manual_seed(seed)
    text_config = UMT5Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **TINY_TEXT_CONFIG,
    )
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(text_config),
        vae=AutoencoderKLWan(**vae),
        scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG),
        transformer=WanTransformer3DModel(**transformer),
        transformer_2=WanTransformer3DModel(**transformer) if experts == 2 else None,
        boundary_ratio=BOUNDARY_RATIO if experts == 2 else None,
        expand_timesteps=experts == 1,
    )
    pipe.save_pretrained(str(out_dir))
    return out_dir
