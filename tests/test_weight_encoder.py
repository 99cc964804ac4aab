"""The weights view: invariances the AutoLoRA-style encoder promises, and that it trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from retrieval.weight_encoder import (
    TOKEN_DIM,
    EncoderConfig,
    WeightEncoder,
    lora_tokens,
    pad,
    train_weight_encoder,
)
from styles.lora import LoraFile, LoraMetadata, LoraModule


def _lora(modules: list[LoraModule]) -> LoraFile:
    return LoraFile(Path("x.safetensors"), "0" * 64, "kohya", "sd1",
                    {m.target: m for m in modules}, LoraMetadata(), "F32", None)


def _module(seed: int, rank: int = 4, target: str = "unet.mid_block.attentions.0.proj_in"):
    g = torch.Generator().manual_seed(seed)
    return LoraModule(target, "linear", torch.randn(rank, 32, generator=g),
                      torch.randn(16, rank, generator=g), 0.5)


def test_tokens_ignore_order_and_sign_of_rank_components_and_padding_rank():
    module = _module(0)
    perm = torch.tensor([2, 0, 3, 1])
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0])
    shuffled = LoraModule(module.target, "linear", module.down[perm] * signs[:, None],
                          module.up[:, perm] * signs[None, :], module.scale)
    padded = LoraModule(module.target, "linear", torch.cat([module.down, torch.zeros(4, 32)]),
                        torch.cat([module.up, torch.randn(16, 4)], dim=1), module.scale)
    base = lora_tokens(_lora([module]))
    assert base.shape == (1, TOKEN_DIM)
    assert torch.allclose(base, lora_tokens(_lora([shuffled])), atol=1e-5)
    assert torch.allclose(base, lora_tokens(_lora([padded])), atol=1e-5)


def test_encoder_handles_any_number_of_modules_and_is_normalised():
    model = WeightEncoder(EncoderConfig(embed_dim=8))
    one = _lora([_module(1)])
    three = _lora([_module(2, target=f"unet.up_blocks.1.attentions.{i}.proj_in")
                   for i in range(3)])
    out = model.embed([one, three])
    assert out.shape == (2, 8) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    tokens, mask = pad([lora_tokens(one), lora_tokens(three)])
    assert mask.sum().item() == 4 and tokens.shape == (2, 3, TOKEN_DIM)


def _toy_set(first: int, seed: int, target: str) -> tuple[list[LoraFile], list[np.ndarray]]:
    """Four LoRAs of two modules each, and three unit text targets for each."""
    loras = [_lora([_module(first + i), _module(first + 10 + i, target=target)])
             for i in range(4)]
    g = np.random.default_rng(seed)
    targets = [g.normal(size=(3, 8)).astype(np.float32) for _ in loras]
    return loras, [t / np.linalg.norm(t, axis=1, keepdims=True) for t in targets]


def test_training_pulls_each_lora_to_its_own_texts(tmp_path):
    loras, targets = _toy_set(10, 0, "unet.down_blocks.1.ff.net.2")
    model = train_weight_encoder(loras, targets, steps=150)
    sims = model.embed(loras) @ np.stack([t.mean(0) for t in targets]).T
    assert (sims.argmax(axis=1) == np.arange(4)).all()
    model.save(tmp_path)
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "weight_encoder.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    loaded = WeightEncoder.load(tmp_path)  # training rounds to what is stored: nothing is lost
    assert loaded.digest == model.digest
    assert np.array_equal(loaded.embed(loras), model.embed(loras))


def test_an_ensemble_averages_members_trained_from_disjoint_seeds_and_reloads(tmp_path):
    loras, targets = _toy_set(30, 1, "unet.up_blocks.1.ff.net.2")
    single = [train_weight_encoder(loras, targets, steps=60, seed=s) for s in range(3)]
    ensemble = train_weight_encoder(loras, targets, steps=60, seed=0, members=3)
    assert len(ensemble.members) == 3
    # member i of seed 0 is the lone encoder of seed i: same training, nothing shared
    for member, alone in zip(ensemble.members, single, strict=True):
        for a, b in zip(member.parameters(), alone.members[0].parameters(), strict=True):
            assert torch.equal(a, b)
    mean = np.mean([m.embed(loras) for m in single], axis=0)
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    assert np.allclose(ensemble.embed(loras), expected, atol=1e-5)
    other = train_weight_encoder(loras, targets, steps=60, seed=1, members=3)
    assert not np.allclose(other.embed(loras), ensemble.embed(loras), atol=1e-3)
    ensemble.save(tmp_path)
    loaded = WeightEncoder.load(tmp_path)
    assert len(loaded.members) == 3
    assert np.allclose(loaded.embed(loras), ensemble.embed(loras), atol=1e-6)


def test_an_encoder_saved_before_ensembles_still_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    loras = [_lora([_module(50 + i)]) for i in range(3)]
    targets = [np.eye(8, dtype=np.float32)[i:i + 2] for i in range(3)]
    model = train_weight_encoder(loras, targets, steps=20)
    model.save(tmp_path)
    state = load_file(str(tmp_path / "weight_encoder.safetensors"))
    save_file({k.removeprefix("members.0."): v for k, v in state.items()},
              str(tmp_path / "weight_encoder.safetensors"))  # the old layout: one encoder
    assert np.allclose(WeightEncoder.load(tmp_path).embed(loras), model.embed(loras), atol=1e-6)


def test_negatives_push_every_lora_away_from_prompts_that_ask_for_no_style():
    loras, targets = _toy_set(60, 2, "unet.down_blocks.2.ff.net.2")
    # style-free prompts that sit near the styles' texts (as "a blue square" sits near the
    # blueprint style's descriptions)
    g = np.random.default_rng(3)
    negatives = np.stack([t.mean(0) for t in targets]) + 0.5 * g.normal(size=(4, 8))
    negatives = np.repeat(negatives, 8, axis=0) + 0.1 * g.normal(size=(32, 8))
    negatives = (negatives / np.linalg.norm(negatives, axis=1, keepdims=True)).astype(np.float32)
    plain = train_weight_encoder(loras, targets, steps=150)
    pushed = train_weight_encoder(loras, targets, steps=150, negatives=negatives)
    near = {name: float((model.embed(loras) @ negatives.T).mean())
            for name, model in (("plain", plain), ("pushed", pushed))}
    assert near["pushed"] < near["plain"] - 0.05, near
    sims = pushed.embed(loras) @ np.stack([t.mean(0) for t in targets]).T
    assert (sims.argmax(axis=1) == np.arange(4)).all()  # and each still finds its own texts
