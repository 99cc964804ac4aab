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
