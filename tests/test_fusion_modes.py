"""cmlora and gated modes, frequency profiles and gates: pure maths first, then the engine on
the tiny random pipeline (2-3 steps)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fusion.cmlora import (
    dominance_plan,
    dominance_weights,
    mix,
    order_by_frequency,
    refresh_steps,
)
from fusion.engine import GenerationEngine, LoraUse
from fusion.frequency import (
    frequency_profile,
    frequency_profile_of_images,
    high_frequency_score,
    radial_energy,
)
from fusion.gates import (
    LAYER_FEATURES,
    GateNetwork,
    GateNetworkConfig,
    base_fingerprint,
    frequency_prior,
    gate_table,
    layer_features,
)
from fusion.recipe import Recipe
from styles.reader import ReadOptions, read_lora
from styles.writers import save_kohya
from tests.conftest import random_lora


# -- frequency ------------------------------------------------------------------------------
def _pattern(period: float, size: int = 32) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32)
    return torch.sin(2 * math.pi * x / period)[None, :].expand(size, size)


def test_radial_energy_puts_a_fine_pattern_high_and_a_coarse_one_low():
    coarse, fine = radial_energy(_pattern(32)), radial_energy(_pattern(2.5))
    assert torch.isclose(coarse.sum(), torch.tensor(1.0)) and torch.isclose(
        fine.sum(), torch.tensor(1.0))
    assert coarse.argmax() <= 1 and fine.argmax() >= 12
    assert high_frequency_score(coarse.tolist()) < 0.01 < 0.99 < high_frequency_score(
        fine.tolist())
    assert radial_energy(torch.zeros(4, 4)).sum() == 0


def test_profile_of_images_measures_the_change_not_the_image():
    rng = np.random.default_rng(0)
    busy = rng.random((2, 32, 32, 3)).astype(np.float32)
    recoloured = busy + 0.2  # a flat colour shift: all energy at frequency zero
    profile = frequency_profile_of_images(recoloured, busy)
    assert profile[0] == pytest.approx(1.0) and high_frequency_score(profile) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        frequency_profile_of_images(busy, busy[:1])


# -- cmlora ----------------------------------------------------------------------------------
def test_nonuniform_refresh_schedule_matches_the_code():
    steps = refresh_steps(200)
    assert len(steps) == 85 and steps[:3] == [0, 2, 4] and 75 in steps and 78 in steps
    assert 175 in steps and 177 in steps and 199 in steps and 76 not in steps


def test_dominance_weights_table_and_mix():
    for n, (dom, other) in {2: (1.2, 0.8), 3: (1.667, 0.667), 5: (2.647, 0.588)}.items():
        weights = dominance_weights(n, 1)
        assert sum(weights) == pytest.approx(n)
        assert weights[1] == pytest.approx(dom, abs=1e-3) and weights[0] == pytest.approx(
            other, abs=1e-3)
    assert dominance_weights(1, 0) == [1.0]
    a, b = torch.ones(2), torch.zeros(2)
    assert torch.allclose(mix([a, b], [1.2, 0.8]), torch.full((2,), 0.6))


def test_frequency_order_and_dominance_rotation():
    order, high = order_by_frequency([0.01, 0.3, 0.25])
    assert order == [1, 2, 0] and high == 2  # 0.25 >= 0.75 × 0.3: high; 0.01: low
    assert order_by_frequency([0.0, 0.01]) == ([1, 0], 1)
    assert order_by_frequency([0.02, 0.02]) == ([0, 1], 2)  # equal: all high, no phase 2
    plan = dominance_plan(20, 3, 2)
    # phase 1: the high-frequency group takes turns at refresh steps, held in between
    assert [p.dominant for p in plan[:6]] == [0, 0, 1, 1, 0, 0]
    assert plan[0].refresh and not plan[1].refresh
    # phase 2 (after 60% of the steps): positions 1..R, so the low-frequency LoRA leads too
    late = {p.dominant for p in plan[13:]}
    assert late == {1, 2}
    assert {p.dominant for p in dominance_plan(20, 2, 2)} == {0, 1}


# -- gates -----------------------------------------------------------------------------------
def test_layer_features_describe_position_and_kind():
    down = layer_features("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 0.1, 3)
    up = layer_features("up_blocks.2.resnets.0.conv1", 0.9, 3)
    assert len(down) == LAYER_FEATURES == len(up)
    assert down[0] == 1.0 and down[5] == 0.0 and down[7] == 1.0  # down, full res, attn2
    assert up[2] == 1.0 and up[5] == 0.0 and up[10] == 1.0  # up block 2 is full resolution


def test_frequency_prior_leaves_one_lora_alone_and_swaps_leads_over_time():
    assert np.array_equal(frequency_prior([0.3], 5), np.ones((5, 1)))
    prior = frequency_prior([0.01, 0.4], 5)
    assert prior[0, 0] > 1 > prior[0, 1] and prior[-1, 1] > 1 > prior[-1, 0]
    assert np.allclose(frequency_prior([0.2, 0.2], 4), 1.0)


def test_untrained_gate_network_is_merge_and_trains():
    net = GateNetwork(GateNetworkConfig(text_dim=8, lora_dim=5))
    layers = torch.rand(7, LAYER_FEATURES)
    gates = net(layers, torch.tensor([10, 500, 900]), torch.randn(3, 8), torch.rand(2, 5))
    assert gates.shape == (3, 7, 2) and torch.allclose(gates, torch.ones_like(gates))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    torch.manual_seed(0)
    for _ in range(60):
        gates = net(layers, torch.tensor([10, 900]), torch.randn(2, 8), torch.rand(2, 5))
        loss = (gates - 0.5).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 and (gates < 2.0).all()


def test_gate_table_precedence_user_then_learned_then_prior():
    user = np.full((4, 3, 3), 0.7)
    learned = np.full((4, 3, 3), 1.5)
    learned[:2, :, 2] = 0.5  # the third LoRA's gates: 0.5 early, 1.5 late (mean 1.0)
    learned[:, 0, 1] = 3.0  # the second's: 3.0 on the first layer, 1.5 on the others
    table, sources = gate_table(user, [True, False, False], [0.7, 0.5, 1.0], learned,
                                [0.1, 0.2, 0.3])
    assert sources == ["user", "learned", "learned"]
    assert np.allclose(table[..., 0], 0.7)
    # learned gates keep their shape over layers and steps, rescaled to the LoRA's weight
    assert np.allclose(table[..., 1].mean(), 0.5) and np.allclose(table[..., 2].mean(), 1.0)
    assert np.allclose(table[:, 0, 1], 2 * table[:, 1, 1])
    assert np.allclose(table[:2, :, 2], 0.5) and np.allclose(table[2:, :, 2], 1.5)
    table, sources = gate_table(user, [False, False], [1.0, 1.0], None, [0.1, 0.3])
    assert sources == ["prior", "prior"] and table[0, 0, 0] > table[0, 0, 1]


# -- the engine ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tiny_base):
    return GenerationEngine(tiny_base, gate_network=None)


@pytest.fixture(scope="module")
def loras(tiny_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mode-loras")
    table = tiny_base.table
    conv = [t for t in table.order if t.startswith("unet.") and t.endswith("conv1")]
    paths = [save_kohya(random_lora(table, seed=1), folder / "a.st"),
             save_kohya(random_lora(table, seed=3, magnitude=0.4), folder / "b.st"),
             save_kohya(random_lora(table, conv, seed=4, rank=3), folder / "c.st")]
    return [read_lora(p, ReadOptions(base_table=table)) for p in paths]


def _out(engine, uses, mode="merge", steps=3, seed=7, **extra):
    recipe = engine.recipe_for("a red star", uses, steps=steps, width=32, height=32, seed=seed,
                               mode=mode, **extra)
    return engine.generate(recipe, uses)


def _pixels(output) -> np.ndarray:
    return np.asarray(output.images[0], dtype=np.float32)


def test_frequency_profile_of_a_lora_is_stable(engine, loras):
    use = LoraUse(loras[0], "a", 0.3)  # its weight does not matter: the file is profiled
    first = frequency_profile(engine, use, prompts=("a red star",), steps=2)
    assert len(first) == 16 and sum(first) == pytest.approx(1.0, abs=1e-4)
    assert first == frequency_profile(engine, LoraUse(loras[0], "a"), prompts=("a red star",),
                                      steps=2)


def test_cmlora_with_one_lora_is_that_lora(engine, loras):
    a = LoraUse(loras[0], "a", 0.9)
    assert np.abs(_pixels(_out(engine, [a], "cmlora")) - _pixels(_out(engine, [a]))).max() <= 1


def test_cmlora_caching_saves_passes_and_stays_close(engine, loras):
    uses = [LoraUse(loras[0], "a", 0.9), LoraUse(loras[1], "b", 0.9)]
    full = _out(engine, uses, "cmlora", steps=6, cmlora_cache="none")
    cached = _out(engine, uses, "cmlora", steps=6)
    assert full.unet_passes == 2 * 6
    # refresh steps of 6 are 0, 2, 5. Step 0: base + both LoRAs; steps 2, 5: the dominant
    # LoRA + base; steps 1, 3, 4: the dominant LoRA alone
    assert refresh_steps(6) == [0, 2, 5]
    assert cached.unet_passes == 3 + 2 * 2 + 3 * 1
    composite = _out(engine, uses, "composite", steps=6)
    assert not np.array_equal(_pixels(full), _pixels(composite))  # the dominant LoRA leads
    assert np.array_equal(_pixels(cached), _pixels(_out(engine, uses, "cmlora", steps=6)))


def test_gated_without_a_network_uses_the_frequency_prior(engine, loras):
    uses = [LoraUse(loras[0], "a", 0.8), LoraUse(loras[1], "b", 0.8)]
    out = _out(engine, uses, "gated")
    gates = out.gates
    assert gates.sources == ["prior", "prior"] and out.unet_passes == 3
    assert gates.values.shape == (len(gates.layers), 3, 2)
    assert not np.allclose(gates.values[..., 0], 0.8)  # the prior moves the gates over steps
    json_map = gates.to_json()
    assert json_map["loras"] == ["a", "b"] and len(json_map["values"][0]) == 3
    present = np.array(json_map["present"])  # which LoRA has a module in which layer
    assert present.shape == (len(gates.layers), 2) and present.any(axis=1).all()
    assert np.all(np.array(json_map["values"]).transpose(0, 2, 1)[~present] == 0)


def test_gated_user_schedule_wins_and_fused_matches_adapters(engine, loras):
    uses = [LoraUse(loras[0], "a", 0.8, step_weights=[1.0, 0.5]), LoraUse(loras[1], "b", 0.6)]
    adapters = _out(engine, uses, "gated")
    assert adapters.gates.sources == ["user", "prior"]
    unet_rows = [i for i, t in enumerate(adapters.gates.layers) if t.startswith("unet.")]
    assert np.allclose(adapters.gates.values[unet_rows, :, 0], [0.8, 0.6, 0.4])
    fused = _out(engine, uses, "gated", apply="fused", gate_tolerance=0.0)
    assert np.abs(_pixels(adapters) - _pixels(fused)).max() <= 1.0
    assert fused.gates.rewrites > 0
    lazy = _out(engine, uses, "gated", apply="fused", gate_tolerance=0.5)
    assert lazy.gates.rewrites < fused.gates.rewrites  # rewritten only when gates move


def test_gated_with_an_untrained_network_is_exactly_merge(tiny_base, engine, loras):
    config = GateNetworkConfig(text_dim=tiny_base.pipe.text_encoder.config.hidden_size,
                               lora_dim=17, base_fingerprint=base_fingerprint(tiny_base.pipe))
    learned = GenerationEngine(tiny_base, gate_network=GateNetwork(config))
    assert learned.gate_network is not None and learned.gate_network_id
    uses = [LoraUse(loras[0], "a", 0.8), LoraUse(loras[2], "c", 0.7)]
    gated = _out(learned, uses, "gated")
    assert gated.gates.sources == ["learned", "learned"]
    assert np.array_equal(_pixels(gated), _pixels(_out(learned, uses)))
    # a recipe records its gate network; another engine refuses to replay it differently
    with pytest.raises(ValueError, match="gate network"):
        engine.generate(gated.recipes[0], uses)
    mismatched = GateNetwork(GateNetworkConfig(text_dim=4, lora_dim=17, base_fingerprint="x"))
    assert GenerationEngine(tiny_base, gate_network=mismatched).gate_network is None


def test_learned_gates_blend_several_loras_and_leave_one_alone(tiny_base, loras):
    config = GateNetworkConfig(text_dim=tiny_base.pipe.text_encoder.config.hidden_size,
                               lora_dim=17, base_fingerprint=base_fingerprint(tiny_base.pipe))
    network = GateNetwork(config)
    with torch.no_grad():  # gates that vary over layers and steps
        network.mlp[-1].weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    learned = GenerationEngine(tiny_base, gate_network=network)
    pair = [LoraUse(loras[0], "a", 0.8), LoraUse(loras[2], "c", 0.7)]
    blended = _out(learned, pair, "gated")
    assert blended.gates.sources == ["learned", "learned"]
    assert blended.gates.values.std() > 0.05  # the network's shape over layers and steps
    assert not np.array_equal(_pixels(blended), _pixels(_out(learned, pair)))
    alone = _out(learned, pair[:1], "gated")  # nothing to blend: the LoRA at its own weight
    assert alone.gates.sources == ["weight"] and np.allclose(alone.gates.values, 0.8)
    assert np.array_equal(_pixels(alone), _pixels(_out(learned, pair[:1])))


def test_recipe_accepts_new_modes_and_checks_their_settings():
    recipe = Recipe("p", "b", "sd1", mode="gated", apply="fused")
    assert Recipe.from_json(recipe.to_json()).mode == "gated"
    with pytest.raises(ValueError, match="cmlora_cache"):
        Recipe("p", "b", "sd1", mode="cmlora", cmlora_cache="deep")
    with pytest.raises(ValueError, match="apply='adapters'"):
        Recipe("p", "b", "sd1", mode="cmlora", apply="fused")


@pytest.mark.parametrize("mode", ["merge", "gated", "composite"])
def test_generate_many_batches_prompts_and_matches_one_by_one(engine, loras, mode):
    uses = [LoraUse(loras[0], "a", 0.9), LoraUse(loras[1], "b", 0.7)]
    prompts = ["a red star", "a blue square", "a green ring"]
    recipes = [engine.recipe_for(p, uses, steps=3, width=32, height=32, seed=i, mode=mode)
               for i, p in enumerate(prompts)]
    together = engine.generate_many(recipes, uses)
    alone = [engine.generate(r, uses) for r in recipes]
    assert [r.prompt for r in together.recipes] == prompts
    assert [r.seed for r in together.recipes] == [0, 1, 2]
    for image, single in zip(together.images, alone, strict=True):
        assert np.abs(np.asarray(image, np.float32) - _pixels(single)).max() <= 1.0
    # UNet passes per image stay what one image alone costs
    assert together.unet_passes == alone[0].unet_passes
    assert not np.array_equal(np.asarray(together.images[0]), np.asarray(together.images[1]))
    with pytest.raises(ValueError, match="differ only in prompt and seed"):
        engine.generate_many([recipes[0], dataclasses.replace(recipes[1], steps=4)], uses)


@pytest.mark.parametrize("mode", ["composite", "cmlora"])
def test_hand_written_loops_honour_the_output_type(engine, loras, mode):
    uses = [LoraUse(loras[0], "a", 0.9), LoraUse(loras[1], "b", 0.7)]
    recipe = engine.recipe_for("a red star", uses, steps=2, width=32, height=32, mode=mode)
    array = engine.generate(recipe, uses, output_type="np").images[0]
    assert isinstance(array, np.ndarray) and array.shape == (32, 32, 3)
    pil = engine.generate(recipe, uses).images[0]
    assert np.abs(np.asarray(pil, np.float32) - array * 255).max() <= 1.0
