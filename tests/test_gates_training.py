"""Gate training on the tiny random pipeline: gradients reach the gates, nothing else moves,
the held-out split is respected, and the saved network loads into an engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.engine import GenerationEngine, LoraUse
from fusion.gate_training import GateHooks, GateTrainingConfig, split_sets, train_gate_network
from fusion.gates import GateNetwork
from styles.reader import ReadOptions, read_lora
from styles.starter.looks import clashing_pairs
from styles.writers import save_kohya
from tests.conftest import random_lora

SLUGS = ["noir", "stripes", "crescent-moon", "film-grain", "arrow", "pastel"]


def test_split_is_deterministic_disjoint_and_keeps_single_styles():
    train, held = split_sets(2, 0.25)
    assert held and train and not set(train) & set(held)
    assert split_sets(2, 0.25) == (train, held)
    assert split_sets(1, 0.25)[1] == []
    assert all(len(s) == 3 for s in split_sets(3, 0.25)[1])
    # no set asks for a style another of its styles hides (chalkboard hides pop-art)
    triples = [s for part in split_sets(3, 0.25) for s in part]
    assert not any(clashing_pairs(s) for s in train + held + triples)
    assert ("chalkboard", "pop-art") not in train + held
    assert ("pop-art", "chalkboard") not in train + held


def test_training_moves_only_the_gates_and_saves(tiny_base, tmp_path):
    table = tiny_base.table
    engine = GenerationEngine(tiny_base, adapter_capacity=16, gate_network=None)
    uses = {}
    for i, slug in enumerate(SLUGS):
        path = save_kohya(random_lora(table, seed=10 + i, magnitude=0.2), tmp_path / f"{slug}.st")
        profile = list(np.random.default_rng(i).dirichlet(np.ones(16)))
        uses[slug] = LoraUse(read_lora(path, ReadOptions(base_table=table)), slug,
                             frequency=profile)
    for use in uses.values():
        engine.adapters.ensure(use.lora)
    unet_before = {k: v.clone() for k, v in tiny_base.pipe.unet.state_dict().items()}
    config = GateTrainingConfig(steps=3, batch=2, lr=0.05, eval_sets=2, eval_images=2)
    net, report = train_gate_network(engine, uses, config)
    assert report["eval_loss_heldout"]["merge"].keys() == {"k2", "k3"}
    assert all(np.isfinite(v) for v in report["eval_loss_heldout"]["learned"].values())
    held = {tuple(s) for s in report["split"]["held_out"]["2"]}
    assert all(tuple(s) in held | {tuple(x) for x in report["split"]["held_out"]["3"]}
               for s in report["eval_loss_heldout"]["sets"])
    assert not torch.allclose(net.mlp[-1].bias, torch.zeros(1))  # the gates learned
    after = tiny_base.pipe.unet.state_dict()
    assert all(torch.equal(unet_before[k], after[k]) for k in unet_before)  # base and LoRAs
    assert all(isinstance(v, float) for _, _, layer in engine.adapters.named_layers()
               for v in layer.scaling.values())
    folder = net.save(tmp_path / "gates", report)
    loaded = GenerationEngine(tiny_base, gate_network=folder)
    assert isinstance(loaded.gate_network, GateNetwork)
    pair = [uses["noir"], uses["stripes"]]
    recipe = loaded.recipe_for("a red star", pair, steps=2, width=32, height=32, mode="gated")
    out = loaded.generate(recipe, pair)
    assert out.gates.sources == ["learned", "learned"]
    assert not np.allclose(out.gates.values, 1.0)


def test_gate_hooks_shape_gates_for_each_layer(tiny_base):
    layer = torch.nn.Linear(3, 3)

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lora_A = {"x": None}
            self.scaling = {"x": 1.0}

        def forward(self, h):
            return h

    fake = Fake()
    hooks = GateHooks([("p", fake)])
    hooks.set(["x"], torch.arange(2.0).reshape(2, 1, 1))
    fake(torch.zeros(2, 5, 3))
    assert fake.scaling["x"].shape == (2, 1, 1)
    fake(torch.zeros(2, 3, 4, 4))
    assert fake.scaling["x"].shape == (2, 1, 1, 1)
    hooks.remove()
    del layer
    with pytest.raises(ValueError):
        GateTrainingConfig(holdout=1.5)
