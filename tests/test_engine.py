"""The generation engine on the tiny random-weight pipeline: the real code path, in seconds."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fusion.engine import GenerationEngine, LoraUse
from fusion.recipe import Recipe, save_png
from styles.reader import ReadOptions, read_lora
from styles.writers import save_diffusers, save_kohya
from tests.conftest import random_lora


@pytest.fixture(scope="module")
def engine(tiny_base):
    return GenerationEngine(tiny_base)


@pytest.fixture(scope="module")
def loras(tiny_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    table = tiny_base.table
    te = [t for t in table.order if t.startswith("text_encoder.") and "q_proj" in t]
    conv = [t for t in table.order if t.startswith("unet.") and t.endswith("conv1")]
    paths = [
        save_kohya(random_lora(table, seed=1) + random_lora(table, te, seed=2), folder / "a.st",
                   {"ss_output_name": "a"}, alpha=1.0),
        save_diffusers(random_lora(table, seed=3), folder / "b.st"),
        save_kohya(random_lora(table, conv, seed=4, rank=3), folder / "c.st"),
    ]
    return [read_lora(p, ReadOptions(base_table=table)) for p in paths]


def _run(engine, uses, steps=3, apply="adapters", seed=7, mode="merge", **extra):
    recipe = engine.recipe_for("a red star", uses, steps=steps, width=32, height=32, seed=seed,
                               apply=apply, mode=mode, **extra)
    return np.asarray(engine.generate(recipe, uses).images[0], dtype=np.float32)


def test_lora_at_weight_zero_equals_the_base(engine, loras):
    base = _run(engine, [])
    assert np.array_equal(base, _run(engine, [LoraUse(loras[0], "a", 0.0)]))


def test_a_lora_changes_the_output(engine, loras):
    base = _run(engine, [])
    assert np.abs(base - _run(engine, [LoraUse(loras[0], "a", 1.0)])).mean() > 1.0


def test_two_loras_together_equal_their_merged_delta(engine, loras):
    uses = [LoraUse(loras[0], "a", 0.8), LoraUse(loras[1], "b", 0.6)]
    adapters = _run(engine, uses)
    fused = _run(engine, uses, apply="fused")
    assert np.abs(adapters - fused).max() <= 1.0  # float rounding only, in 0..255 pixels
    assert np.abs(adapters - _run(engine, [])).mean() > 1.0
    # the fused weights were restored exactly
    assert np.array_equal(_run(engine, []), _run(engine, []))


def test_merged_delta_matches_the_sum_of_deltas(engine, loras, tiny_base):
    """At the module level: PEFT layers with two adapters = base weight + w1*d1 + w2*d2."""
    uses = [LoraUse(loras[0], "a", 0.8), LoraUse(loras[1], "b", 0.6)]
    target = next(t for t in loras[0].modules if t in loras[1].modules)
    path = target.split(".", 1)[1]
    layer = tiny_base.pipe.unet.get_submodule(path)
    from fusion.adapters import ActiveLora, LayerScales

    active = [ActiveLora(engine.adapters.ensure(u.lora), u.lora) for u in uses]
    weights = {a.adapter: u.weight for a, u in zip(active, uses, strict=True)}
    scales = LayerScales(engine.adapters, active, lambda name, t, s: weights[name])
    scales.apply(0)
    x = torch.randn(2, layer.in_features)
    with torch.no_grad():
        got = layer(x)
        weight = layer.base_layer.weight + 0.8 * loras[0].modules[target].delta() \
            + 0.6 * loras[1].modules[target].delta()
        expected = torch.nn.functional.linear(x, weight, layer.base_layer.bias)
    scales.release()
    assert torch.allclose(got, expected, atol=1e-5)


def test_block_weights_and_step_weights(engine, loras):
    base = _run(engine, [])
    off = {"down": 0.0, "mid": 0.0, "up": 0.0}
    # lora b touches only attention layers: zero block weights switch it off
    assert np.array_equal(base, _run(engine, [LoraUse(loras[1], "b", 1.0, block_weights=off)]))
    assert np.array_equal(base, _run(engine, [LoraUse(loras[1], "b", 1.0, step_weights=[0, 0])]))
    fading = _run(engine, [LoraUse(loras[1], "b", 1.0, step_weights=[1, 0])])
    full = _run(engine, [LoraUse(loras[1], "b", 1.0)])
    assert not np.array_equal(fading, full) and not np.array_equal(fading, base)


def test_conv_lora_applies(engine, loras):
    assert np.abs(_run(engine, []) - _run(engine, [LoraUse(loras[2], "c", 1.0)])).mean() > 0.5


def test_recipe_replays_bit_exactly_through_the_png(engine, loras, tmp_path):
    uses = [LoraUse(loras[0], "a", 0.9), LoraUse(loras[1], "b", 0.5, step_weights=[1, 0.2]),
            LoraUse(loras[2], "c", 0.7)]
    recipe = engine.recipe_for("a blue heart", uses, steps=3, width=32, height=32, seed=11,
                               num_images=2)
    first = engine.generate(recipe, uses)
    png = save_png(first.images[1], first.recipes[1], tmp_path / "img.png")
    loaded = Recipe.load(png)
    assert loaded.seed == 12 and loaded.num_images == 1
    again = engine.generate(loaded, uses).images[0]
    assert np.array_equal(np.asarray(again), np.asarray(first.images[1]))


def test_concurrent_requests_do_not_see_each_others_weights(engine, loras):
    expected = {0: _run(engine, [LoraUse(loras[0], "a")], seed=1),
                1: _run(engine, [LoraUse(loras[1], "b")], seed=1)}
    results: dict[int, list] = {0: [], 1: []}

    def worker(i: int) -> None:
        for _ in range(3):
            results[i].append(_run(engine, [LoraUse(loras[i], "ab"[i])], seed=1))

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert all(np.array_equal(r, expected[i]) for r in results[i])


def test_switch_gives_each_lora_its_turn(engine, loras):
    a, b = LoraUse(loras[0], "a", 0.9), LoraUse(loras[1], "b", 0.9)
    # a period as long as the run: only the first LoRA ever leads
    assert np.array_equal(_run(engine, [a, b], mode="switch", switch_period=3),
                          _run(engine, [a]))
    switched = _run(engine, [a, b], mode="switch", switch_period=1)
    assert not np.array_equal(switched, _run(engine, [a, b]))
    assert not np.array_equal(switched, _run(engine, [a]))


def test_composite_with_one_lora_is_that_lora_and_with_two_averages_passes(engine, loras):
    a, b = LoraUse(loras[0], "a", 0.9), LoraUse(loras[1], "b", 0.9)
    assert np.abs(_run(engine, [a], mode="composite") - _run(engine, [a])).max() <= 1.0
    both = _run(engine, [a, b], mode="composite")
    assert np.array_equal(both, _run(engine, [a, b], mode="composite"))  # deterministic
    assert not np.array_equal(both, _run(engine, [a, b]))


def test_modes_that_change_loras_per_step_refuse_fused_weights(engine, loras):
    with pytest.raises(ValueError, match="apply='adapters'"):
        engine.recipe_for("x", [LoraUse(loras[0], "a")], apply="fused", mode="switch")
