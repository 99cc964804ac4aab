"""Base models from a local folder, a hub id (offline here) and a single file."""

from __future__ import annotations

import pytest

from fusion.base import BaseModelError, load_base, pick_device


def test_local_folder_loads_with_its_module_table(tiny_base):
    assert tiny_base.device == "cpu" and tiny_base.family == "unknown"
    assert "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k" in tiny_base.table


def test_hub_id_offline_gives_an_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError, match="could not load the base model 'someone/none'"):
        load_base("someone/none", device="cpu")


def test_pickled_ckpt_is_never_loaded(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"PK\x03\x04")
    with pytest.raises(BaseModelError, match="pickles"):
        load_base(ckpt, device="cpu")


def test_cuda_request_without_a_gpu_is_refused_clearly():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BaseModelError, match="no CUDA GPU"):
        pick_device("cuda")
    assert pick_device(None) == ("cpu", torch.float32)


def test_placeholder_default_base_builds_once_and_loads(tmp_path):
    from fusion.placeholder import build_placeholder_pipeline

    (tmp_path / "base").mkdir()  # a leftover from an interrupted build
    folder = build_placeholder_pipeline(tmp_path / "base")
    assert (folder / "model_index.json").is_file() and not list(tmp_path.glob("*.tmp-*"))
    assert build_placeholder_pipeline(folder) == folder
    assert load_base(folder, device="cpu").pipe.tokenizer("a star").input_ids[-1] == 49407


def test_guidance_defaults_to_the_model_cards_recommendation(tiny_base, tmp_path):
    import dataclasses
    import json

    from fusion.base import DEFAULT_GUIDANCE, recommended_guidance
    from fusion.engine import GenerationEngine
    from styles.starter.paths import MODEL_CARD

    assert recommended_guidance(tmp_path) == DEFAULT_GUIDANCE == 7.5  # no card: diffusers'
    (tmp_path / MODEL_CARD).write_text(json.dumps({"guidance_scale": 3}))
    assert recommended_guidance(tmp_path) == 3.0
    engine = GenerationEngine(dataclasses.replace(tiny_base, guidance_scale=3.0))
    assert engine.recipe_for("a star", [], steps=2).guidance_scale == 3.0
    assert engine.recipe_for("a star", [], steps=2, guidance_scale=None).guidance_scale == 3.0
    assert engine.recipe_for("a star", [], steps=2, guidance_scale=9.0).guidance_scale == 9.0
    assert GenerationEngine(tiny_base).recipe_for("a star", []).guidance_scale == 7.5
    (tmp_path / MODEL_CARD).write_text(json.dumps({"guidance_scale": "high"}))
    with pytest.raises(BaseModelError, match=f"{MODEL_CARD}: 'guidance_scale' must be"):
        recommended_guidance(tmp_path)
    (tmp_path / MODEL_CARD).write_text("{")
    with pytest.raises(BaseModelError, match=f"{MODEL_CARD}: not a JSON object"):
        recommended_guidance(tmp_path)
