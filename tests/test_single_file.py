"""A base model from one original-layout (LDM / A1111) `.safetensors` checkpoint, offline with
`config=` (the CLI's `--base-config`): same weights, same images as the diffusers folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fusion.base import BaseModelError, load_base
from fusion.engine import GenerationEngine
from tests.ldm_layout import TEXT, UNET, VAE, to_ldm_checkpoint
from tests.test_cli import loratlas

SETTINGS = {"steps": 2, "width": 32, "height": 32, "seed": 7}


@pytest.fixture(scope="module")
def folder_base(tiny_pipeline_dir):
    """Loaded afresh: the session's `tiny_base` may carry adapters from other tests."""
    return load_base(tiny_pipeline_dir, device="cpu")


@pytest.fixture(scope="module")
def checkpoint_file(folder_base, tmp_path_factory):
    path = tmp_path_factory.mktemp("single-file") / "tiny-sd.safetensors"
    save_file(to_ldm_checkpoint(folder_base.pipe), path)
    return path


@pytest.fixture(scope="module")
def single_base(checkpoint_file, tiny_pipeline_dir):
    return load_base(checkpoint_file, "cpu", config=str(tiny_pipeline_dir))


def _image(base) -> np.ndarray:
    engine = GenerationEngine(base)
    recipe = engine.recipe_for("a red star", [], **SETTINGS)
    return np.asarray(engine.generate(recipe, []).images[0])


def test_the_checkpoint_is_in_the_ldm_layout(checkpoint_file):
    from safetensors import safe_open

    with safe_open(checkpoint_file, "pt") as f:
        keys = list(f.keys())
    assert all(k.startswith((UNET, VAE, TEXT)) for k in keys)
    assert f"{UNET}middle_block.1.proj_in.weight" in keys
    assert f"{VAE}decoder.mid.attn_1.q.weight" in keys
    assert f"{TEXT}text_model.final_layer_norm.weight" in keys
    assert not any("down_blocks" in k or "mid_block" in k for k in keys)


def test_single_file_loads_offline_with_every_tensor_equal(folder_base, single_base):
    for name in ("unet", "vae", "text_encoder"):
        want = getattr(folder_base.pipe, name).state_dict()
        got = getattr(single_base.pipe, name).state_dict()
        assert set(got) == set(want), name
        unequal = [k for k in want if not torch.equal(got[k], want[k])]
        assert not unequal, f"{name}: {unequal[:5]}"
    assert single_base.family == folder_base.family
    assert single_base.table.order == folder_base.table.order
    assert type(single_base.pipe.scheduler) is type(folder_base.pipe.scheduler)


def test_single_file_base_draws_the_folder_base_image_bit_for_bit(folder_base, single_base):
    image = _image(folder_base)
    assert image.std() > 0
    assert np.array_equal(_image(single_base), image)


def test_without_a_config_offline_the_error_says_to_give_one(checkpoint_file, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(BaseModelError, match="--base-config DIR"):
        load_base(checkpoint_file, "cpu")


def test_cli_generates_from_a_single_file_with_base_config(checkpoint_file, tiny_pipeline_dir,
                                                           folder_base, tmp_path):
    run = loratlas("generate", "a red star", "--base-model", str(checkpoint_file),
                   "--base-config", str(tiny_pipeline_dir), "--steps", "2", "--size", "32x32",
                   "--seed", "7", "--device", "cpu", "--out", str(tmp_path), "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["recipe"]["base_model"] == str(checkpoint_file)
    with Image.open(result["files"][0]) as written:
        assert np.array_equal(np.asarray(written.convert("RGB")), _image(folder_base))
