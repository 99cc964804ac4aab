"""Tests for the starter open_clip model: config, encoders, resumable training, shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from styles.starter import clip_model as cm
from styles.starter.looks import STYLES, apply_styles, clashing_pairs
from styles.starter.world import render_scene, sample_scene

SHIPPED = cm.DEFAULT_DIR / cm.WEIGHTS_FILE


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[torch.nn.Module, object]:
    """A randomly initialised starter CLIP and its tokenizer."""
    model = cm.build_model()
    return model, open_clip.get_tokenizer(cm.MODEL_NAME)


def _images(n: int, seed: int = 0, slugs: tuple[str, ...] = ()) -> np.ndarray:
    """n world images, styled with `slugs` if given."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scene = sample_scene(rng)
        im = render_scene(scene, cm.IMAGE_SIZE)
        out.append(apply_styles(im, list(slugs), seed=i, scene=scene) if slugs else im)
    return np.stack(out)


def test_config_registers_and_builds(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    assert cm.register_starter_config() == cm.MODEL_NAME
    assert cm.MODEL_NAME in open_clip.list_models()
    assert open_clip.get_model_config(cm.MODEL_NAME)["embed_dim"] == 256
    assert isinstance(tokenizer, open_clip.SimpleTokenizer)
    assert tokenizer(["a red circle"]).shape == (1, 77)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params * 2 < 15e6  # fp16 weights stay under 15 MB


def test_encoders_shapes_and_norms(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    t = cm.encode_texts(model, tokenizer, ["a red circle", "faded brownish old photograph"])
    i = cm.encode_images(model, _images(3))
    assert t.shape == (2, 256) and i.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(i, axis=1), 1.0, atol=1e-5)


def test_trimmed_text_encoder_matches_open_clip(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    tokens = tokenizer(["a star", "a large crimson star on a plain gray background, zqsepia"])
    with torch.no_grad():
        full = model.encode_text(tokens, normalize=True)
        trimmed = cm._encode_text_trimmed(model, tokens)
    torch.testing.assert_close(full, trimmed, atol=1e-5, rtol=1e-5)


def test_preprocess_matches_numpy_path(model_and_tokenizer) -> None:
    model, _ = model_and_tokenizer
    _, _, preprocess = open_clip.create_model_and_transforms(cm.MODEL_NAME, load_weights=False)
    u8 = (_images(1)[0] * 255 + 0.5).astype(np.uint8)
    via_pil = preprocess(Image.fromarray(u8))
    via_numpy = cm.images_to_tensor(model, u8[None] / 255.0)[0]
    torch.testing.assert_close(via_pil, via_numpy, atol=1e-5, rtol=1e-5)


def test_training_texts_hold_out_phrases_and_avoid_clashes() -> None:
    rng = np.random.default_rng(3)
    held = set()
    for spec in STYLES.values():
        name = spec.name.lower()
        allowed = f"{name} style|in the style of {name}|{name} look|{spec.description}"
        # a held-out phrase that is itself a name form ("embossed") cannot be kept out
        held |= {p for p in spec.phrases[-cm.HELD_OUT_PHRASES:] if p not in allowed}
    assert len(held) > 40
    for _ in range(300):
        slugs = cm.sample_styles(rng)
        assert len(slugs) <= 3 and not clashing_pairs(slugs)
        text = cm.training_caption(sample_scene(rng), slugs, rng)
        assert not any(p in text for p in held)


def test_train_writes_files_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "clip"
    path = cm.train_starter_clip(out, steps=3, batch_size=8, progress=False)
    assert path == out / cm.WEIGHTS_FILE and path.is_file()
    info = json.loads((out / "training.json").read_text())
    assert info["steps"] == 3 and info["batch_size"] == 8 and info["seed"] == 0
    assert np.isfinite(info["final_loss"]) and info["seconds"] > 0
    cfg = json.loads((out / cm.CONFIG_FILE).read_text())
    assert cfg["model_cfg"] == cm.MODEL_CFG
    assert (out / cm.CHECKPOINT_FILE).is_file()
    cm.train_starter_clip(out, steps=5, batch_size=8, progress=False)
    info2 = json.loads((out / "training.json").read_text())
    assert info2["steps"] == 5 and info2["resumed_from_step"] == 3
    assert torch.load(out / cm.CHECKPOINT_FILE, weights_only=True)["step"] == 5
    model, preprocess, tokenizer = cm.load_starter_clip(out)
    assert next(model.parameters()).dtype == torch.float32
    assert cm.encode_texts(model, tokenizer, ["sepia"]).shape == (1, 256)
    assert preprocess(Image.new("RGB", (64, 64))).shape == (3, 64, 64)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="trained starter CLIP not present")
def test_shipped_model_separates_sepia_from_pixel_art() -> None:
    assert SHIPPED.stat().st_size < 15e6
    model, _, tokenizer = cm.load_starter_clip(cm.DEFAULT_DIR)
    text = cm.encode_texts(model, tokenizer, [STYLES["sepia"].phrases[0]])[0]
    sepia = cm.encode_images(model, _images(6, seed=11, slugs=("sepia",)))
    pixel = cm.encode_images(model, _images(6, seed=11, slugs=("pixel-art",)))
    assert (sepia @ text).mean() > (pixel @ text).mean()
    assert np.mean(sepia @ text > pixel @ text) >= 5 / 6


def _text_encoder_beside(clip_dir: Path, folder: Path) -> Path:
    """Write the clip's text tower as a pipeline's fp16 text encoder, as save_pipeline does."""
    from styles.starter.base_model import text_encoder_from_starter_clip

    text_encoder_from_starter_clip(clip_dir).half().save_pretrained(folder)
    return folder


def test_a_shared_text_tower_loads_the_same_model(tmp_path: Path) -> None:
    from safetensors import safe_open

    from styles.starter.text_tower import (
        is_text_tower_key,
        share_text_tower,
        starter_clip_digest,
    )

    out = tmp_path / "open_clip"
    cm.train_starter_clip(out, steps=1, batch_size=8, progress=False)
    digest = starter_clip_digest(out)
    full, _, tokenizer = cm.load_starter_clip(out)
    encoder = _text_encoder_beside(out, tmp_path / "pipeline" / "text_encoder")
    size = (out / cm.WEIGHTS_FILE).stat().st_size
    assert share_text_tower(out, encoder)
    assert not share_text_tower(out, encoder)  # once is enough
    with safe_open(str(out / cm.WEIGHTS_FILE), "pt") as handle:
        assert not any(map(is_text_tower_key, handle.keys()))
    assert (out / cm.WEIGHTS_FILE).stat().st_size < size - 9e6  # the token table is gone
    assert starter_clip_digest(out) == digest  # still names the same model
    shared, _, _ = cm.load_starter_clip(out)
    ours, theirs = shared.state_dict(), full.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    texts = ["a red star", "a heart drawn with thin contour lines"]
    assert np.array_equal(cm.encode_texts(shared, tokenizer, texts),
                          cm.encode_texts(full, tokenizer, texts))


def test_a_text_tower_is_shared_only_when_equal_and_checked_when_loaded(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from styles.starter.text_tower import share_text_tower

    out = tmp_path / "open_clip"
    cm.train_starter_clip(out, steps=1, batch_size=8, progress=False)
    encoder = _text_encoder_beside(out, tmp_path / "pipeline" / "text_encoder")
    weights = encoder / "model.safetensors"
    state = load_file(str(weights))
    nudged = {**state, "final_layer_norm.bias": state["final_layer_norm.bias"] + 1}
    save_file(nudged, str(weights), metadata={"format": "pt"})
    before = (out / cm.WEIGHTS_FILE).read_bytes()
    with pytest.raises(ValueError, match="not .* text tower bit for bit"):
        share_text_tower(out, encoder)
    assert (out / cm.WEIGHTS_FILE).read_bytes() == before  # refused: nothing touched
    assert "text_tower" not in json.loads((out / cm.CONFIG_FILE).read_text())

    save_file(state, str(weights), metadata={"format": "pt"})
    assert share_text_tower(out, encoder)
    save_file(nudged, str(weights), metadata={"format": "pt"})  # the pipeline changed since
    with pytest.raises(ValueError, match="model.safetensors is not the text encoder"):
        cm.load_starter_clip(out)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="keeps its text tower in .*missing"):
        cm.load_starter_clip(out)


def test_a_config_naming_a_shared_tower_still_loads_a_full_weights_file(tmp_path: Path) -> None:
    """share_text_tower writes the config first: a crash before the weights file is replaced
    leaves a folder that loads as before."""
    from styles.starter.text_tower import share_text_tower

    out = tmp_path / "open_clip"
    cm.train_starter_clip(out, steps=1, batch_size=8, progress=False)
    full_bytes = (out / cm.WEIGHTS_FILE).read_bytes()
    full, _, _ = cm.load_starter_clip(out)
    share_text_tower(out, _text_encoder_beside(out, tmp_path / "pipeline" / "text_encoder"))
    (out / cm.WEIGHTS_FILE).write_bytes(full_bytes)  # as if the replace never happened
    loaded, _, _ = cm.load_starter_clip(out)
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in loaded.state_dict().items())


@pytest.mark.skipif(not SHIPPED.is_file(), reason="trained starter CLIP not present")
def test_the_shipped_pack_keeps_the_text_tower_once() -> None:
    from safetensors import safe_open
    from transformers import CLIPTextModel

    from styles.starter.paths import PIPELINE_DIR
    from styles.starter.text_tower import is_text_tower_key

    with safe_open(str(SHIPPED), "pt") as handle:
        assert not any(map(is_text_tower_key, handle.keys()))
    model, _, _ = cm.load_starter_clip(cm.DEFAULT_DIR)
    pipeline = CLIPTextModel.from_pretrained(PIPELINE_DIR / "text_encoder")
    assert torch.equal(model.token_embedding.weight, pipeline.get_input_embeddings().weight.float())
    assert not (PIPELINE_DIR / "tokenizer" / "tokenizer.json").exists()
