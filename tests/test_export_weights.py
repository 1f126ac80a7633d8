"""Export through the real loading path: a diffusers directory written by save_pretrained."""

import pytest
from diffusers import TextToVideoSDPipeline

from t2vserve.export import ONNX_TOLERANCE, check_slot
from t2vserve.export import main as export_main
from t2vserve.families import get_family
from t2vserve.geometry import GEOMETRY_FILE, ModelGeometry


def test_export_from_save_pretrained_directory(tiny_model_dir, tmp_path) -> None:
    weights = tmp_path / "weights"
    pipe = TextToVideoSDPipeline.from_pretrained(str(tiny_model_dir))
    pipe.save_pretrained(str(weights))
    repository = tmp_path / "repo"
    assert export_main(["--weights", str(weights), "--preset", "tiny", "--repository", str(repository),
                        "--calibration-prompts", "1", "--denoiser-queue-delay-us", "0"]) == 0
    for slot in ("text_encoder", "kv_projector", "unet", "vae_decoder"):
        assert (repository / slot / "1" / "model.onnx").stat().st_size > 0
    # --denoiser-queue-delay-us 0: the export's configs hold a latency-first batcher and the loops' barrier off
    for config in ("unet/config.pbtxt", "unet/configs/onnxruntime.pbtxt", "scheduler/config.pbtxt", "t2v_stream/config.pbtxt"):
        text = (repository / config).read_text()
        assert "max_queue_delay_microseconds: 0" in text or 'key: "step_barrier_window_us" value: { string_value: "0" }' in text, config
    geometry = ModelGeometry.load(repository / "scheduler" / "1" / GEOMETRY_FILE)
    assert geometry.family == "unet3d" and geometry.preset == "tiny"
    assert geometry.latent_channels == pipe.unet.config.in_channels
    assert geometry.vae_scaling_factor == pytest.approx(pipe.vae.config.scaling_factor)
    assert geometry.text_hidden_size == pipe.text_encoder.config.hidden_size
    assert geometry.scheduler_config["beta_schedule"] == pipe.scheduler.config.beta_schedule
    tokenizer_ids = pipe.tokenizer("a cat").input_ids
    from transformers import CLIPTokenizer

    exported = CLIPTokenizer.from_pretrained(str(repository / "preprocess" / "1" / "tokenizer"))
    assert exported("a cat").input_ids == tokenizer_ids
    # the exported UNet carries the saved weights: it matches the pipeline's own UNet on random inputs
    unet = get_family("unet3d").slot("unet")
    assert check_slot(unet, unet.module(pipe), geometry, repository / "unet" / "1" / "model.onnx") <= ONNX_TOLERANCE


def test_export_refuses_a_batcher_delay_out_of_range_before_exporting(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        export_main(["--tiny", "--repository", str(tmp_path / "repo"), "--denoiser-queue-delay-us", "-5"])
    assert "--denoiser-queue-delay-us: -5 is out of range; allowed [0, 1000000]" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_export_refuses_a_directory_that_is_not_a_model(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a diffusers unet3d directory"):
        export_main(["--weights", str(tmp_path), "--repository", str(tmp_path / "repo")])
