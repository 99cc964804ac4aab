"""Content guidance: the hook's maths on the tiny random UNet (with each way a request's
LoRAs are applied bypassed for real), then the engine end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.adapters import ActiveLora, FusedWeights, LayerScales
from fusion.content_guidance import ContentGuidance, content_steps
from fusion.engine import GenerationEngine, LoraUse
from fusion.recipe import Recipe
from styles.reader import ReadOptions, read_lora
from styles.writers import save_kohya
from tests.conftest import random_lora


@pytest.fixture(scope="module")
def engine(tiny_base):
    return GenerationEngine(tiny_base, gate_network=None)


@pytest.fixture(scope="module")
def lora(tiny_base, tmp_path_factory):
    path = save_kohya(random_lora(tiny_base.table, seed=5, magnitude=0.5),
                      tmp_path_factory.mktemp("cg") / "a.safetensors")
    return read_lora(path, ReadOptions(base_table=tiny_base.table))


def _unet_inputs(unet):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 8, 8, generator=generator)
    states = torch.randn(2, 7, unet.config.cross_attention_dim, generator=generator)
    return sample, torch.tensor(900), states


@pytest.mark.parametrize("kind", [LayerScales, FusedWeights])
def test_the_hook_adds_the_base_models_own_guidance(engine, lora, kind):
    unet = engine.base.pipe.unet
    active = [ActiveLora(engine.adapters.ensure(lora), lora)]
    applied = kind(engine.adapters, active, lambda name, target, step: 1.0)
    if isinstance(applied, LayerScales):
        applied.apply(0)
    sample, t, states = _unet_inputs(unet)
    try:
        with torch.no_grad():
            with_lora = unet(sample, t, states).sample
            with applied.bypassed():
                alone = unet(sample, t, states).sample
            again = unet(sample, t, states).sample
            guard = ContentGuidance(unet, [applied], scale=1.5, guidance_scale=3.0, until=1)
            try:
                mixed = unet(sample, t, states).sample
                guard.step = 1  # past `until`: the LoRAs alone
                late = unet(sample, t, states).sample
            finally:
                guard.release()
            after = unet(sample, t, states).sample
    finally:
        applied.release()
    with torch.no_grad():
        base = unet(sample, t, states).sample  # nothing applied: the base model
    assert not torch.allclose(with_lora, base, atol=1e-4)  # the LoRA changes the UNet
    assert torch.allclose(alone, base, atol=1e-5)  # bypassed is the base model
    assert torch.equal(again, with_lora)  # and the LoRA is back after it
    # [u, c] → [u_L, c_L + (s/g)(c_B − u_B)], so u + g(c − u) gains s·(c_B − u_B)
    expected = torch.cat([with_lora[:1], with_lora[1:] + 0.5 * (base[1:] - base[:1])])
    assert torch.allclose(mixed, expected, atol=1e-5)
    assert torch.equal(late, with_lora) and torch.equal(after, with_lora)
    assert guard.passes == 1


def test_content_steps_counts_the_first_share():
    assert [content_steps(20, s) for s in (0.4, 0.01, 1.0)] == [8, 1, 20]


def _out(engine, uses, **extra):
    recipe = engine.recipe_for("a red star", uses, steps=4, width=32, height=32, seed=3,
                               **extra)
    return engine.generate(recipe, uses)


def _pixels(output) -> np.ndarray:
    return np.asarray(output.images[0], dtype=np.float32)


def test_a_lora_at_weight_zero_makes_content_guidance_plain_guidance(engine, lora):
    # the LoRA changes nothing, so ε_L = ε_B and u + g(c − u) + s(c − u) is guidance g + s
    off = [LoraUse(lora, "a", 0.0)]
    guided = _out(engine, off, guidance_scale=3.0, content_guidance=1.5,
                  content_guidance_steps=1.0)
    plain = _out(engine, off, guidance_scale=4.5)
    assert np.abs(_pixels(guided) - _pixels(plain)).max() <= 1.0
    assert guided.unet_passes == 4 + 4 and plain.unet_passes == 4


def test_content_guidance_in_the_engine(engine, lora):
    uses = [LoraUse(lora, "a", 1.0)]
    plain = _out(engine, uses, guidance_scale=3.0)
    guided = _out(engine, uses, guidance_scale=3.0, content_guidance=20.0,
                  content_guidance_steps=0.5)
    assert guided.unet_passes == 4 + 2  # one more pass on each of the first 2 of 4 steps
    # (the tiny random UNet's guidance moves little: a large scale makes it show)
    assert np.abs(_pixels(guided) - _pixels(plain)).max() > 10
    fused = _out(engine, uses, guidance_scale=3.0, content_guidance=20.0,
                 content_guidance_steps=0.5, apply="fused")
    assert np.abs(_pixels(fused) - _pixels(guided)).max() <= 1.0
    # gated with fused gates (one LoRA alone runs flat at its weight, as merge does)
    gated = _out(engine, uses, guidance_scale=3.0, content_guidance=20.0,
                 content_guidance_steps=0.5, mode="gated", apply="fused", gate_tolerance=0.0)
    assert np.abs(_pixels(gated) - _pixels(guided)).max() <= 1.0
    # the hook is gone afterwards: the same request without it is the plain image again
    assert np.array_equal(_pixels(_out(engine, uses, guidance_scale=3.0)), _pixels(plain))
    assert guided.recipes[0].content_guidance == 20.0  # the recipe replays it


@pytest.mark.parametrize("settings, words", [
    ({"content_guidance": -1}, "from 0"),
    ({"content_guidance": 1, "content_guidance_steps": 0}, "share of the steps"),
    ({"content_guidance": 1, "mode": "composite"}, "not with composite"),
    ({"content_guidance": 1, "guidance_scale": 1.0}, "above 1"),
])
def test_bad_content_guidance_is_refused_with_the_field(settings, words):
    with pytest.raises(ValueError, match=words):
        Recipe(prompt="p", base_model="m", base_family="sd15", **settings)


def test_a_lora_alone_brings_its_styles_recommended_setting(engine, lora):
    """Unset (None) settings take the style's recommendation when its LoRA is the only one;
    a value given wins, each setting on its own; blends and the modes that cannot take
    content guidance get the defaults (fusion.engine.recommended_settings)."""
    own = {"content_guidance": 1.5, "content_guidance_steps": 0.7}
    alone = LoraUse(lora, "a", 1.0, recommended=own)
    plain = LoraUse(lora, "b", 1.0)
    unset = {"content_guidance": None, "content_guidance_steps": None}

    def chosen(uses, **settings):
        recipe = engine.recipe_for("a star", uses, **{**unset, **settings})
        return recipe.content_guidance, recipe.content_guidance_steps

    assert chosen([alone]) == (1.5, 0.7)
    assert chosen([alone], content_guidance=0.0) == (0.0, 0.7)  # off, as asked
    assert chosen([alone], content_guidance_steps=0.2) == (1.5, 0.2)
    assert chosen([alone], mode="gated") == (1.5, 0.7)
    assert chosen([alone, plain]) == (0.0, 0.4)  # a blend: nothing was chosen for it
    assert chosen([plain]) == chosen([]) == (0.0, 0.4)
    for mode in ("composite", "cmlora"):  # no content guidance there: off, not an error
        assert chosen([alone], mode=mode)[0] == 0.0
    assert chosen([alone], guidance_scale=1.0)[0] == 0.0  # nor without guidance
    # a style may recommend its guidance scale too: it applies in every mode, unless given
    low = LoraUse(lora, "c", 1.0, recommended={"guidance_scale": 1.5})
    unset["guidance_scale"] = None
    for mode in ("merge", "composite"):
        assert engine.recipe_for("a star", [low], mode=mode, **unset).guidance_scale == 1.5
    assert engine.recipe_for("a star", [low], **{**unset, "guidance_scale": 4.0}) \
        .guidance_scale == 4.0
    assert engine.recipe_for("a star", [low, plain], **unset).guidance_scale \
        == engine.base.guidance_scale
    assert engine.recipe_for("a star", [], **unset).guidance_scale == engine.base.guidance_scale
    too_low = LoraUse(lora, "d", 1.0, recommended={**own, "guidance_scale": 1.0})
    assert engine.recipe_for("a star", [too_low], **unset).content_guidance == 0.0
    # what the recipe records is what ran: replaying it needs no recommendation
    guided = _out(engine, [alone], guidance_scale=3.0, content_guidance=None,
                  content_guidance_steps=None)
    assert guided.unet_passes == 4 + 3  # 70% of 4 steps
    assert guided.recipes[0].content_guidance == 1.5
