"""Train the learned gate network on starter-world compositions.

Data: ground-truth multi-style images (styles.starter `apply_styles` on rendered scenes),
captioned with `styled_caption`, encoded by the starter VAE. Loss: the diffusion loss (ε
prediction, the base model's noise schedule) of the base UNet with the set's LoRAs applied at
the gates' weights. Only the gate network learns: base model and LoRAs are frozen; per-sample
gates reach PEFT's `scaling` through forward pre-hooks, so gradients flow to the network.

Style sets of 2 and 3 styles are split by a hash of their names: a `holdout` share is never
trained on (the quality benchmark uses those, with prompts from other seeds); single styles
are all trained on, so that one LoRA alone keeps its fidelity.

    OMP_NUM_THREADS=1 .venv/bin/python -m fusion.gate_training [--steps 400] [--batch 16]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from fusion.adapters import ActiveLora, LayerScales
from fusion.gates import (
    GateNetwork,
    GateNetworkConfig,
    base_fingerprint,
    layer_feature_matrix,
    lora_vector,
)
from styles.starter.base_model import diffusion_target
from styles.starter.data import to_tensor_layout, world_batch
from styles.starter.looks import STYLES, canonical_order, clashing_pairs

Progress = Callable[[int, int, float], None]


@dataclass
class GateTrainingConfig:
    steps: int = field(default=400, metadata={"help": "optimiser steps"})
    batch: int = field(default=16, metadata={"help": "images per step (one style set)"})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate"})
    set_sizes: tuple[float, float, float] = field(
        default=(0.2, 0.4, 0.4), metadata={"help": "probability of 1, 2, 3 styles per step"})
    holdout: float = field(default=0.25, metadata={"help": "share of 2-/3-style sets held out"})
    seed: int = field(default=0, metadata={"help": "scenes, noise and set draws"})
    eval_sets: int = field(default=24, metadata={"help": "held-out sets for the eval loss"})
    eval_images: int = field(default=8, metadata={"help": "images per eval set"})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1:
            raise ValueError("steps and batch must be at least 1")
        if not 0 < self.holdout < 1:
            raise ValueError("holdout must be between 0 and 1")


def style_sets(k: int, slugs=None) -> list[tuple[str, ...]]:
    """Every set of k starter styles of which no two clash, in canonical order."""
    slugs = sorted(slugs or STYLES)
    return [tuple(canonical_order(c)) for c in itertools.combinations(slugs, k)
            if not clashing_pairs(c)]


def is_held_out(style_set, holdout: float = 0.25) -> bool:
    """Deterministic split by a hash of the set's names (independent of the library size)."""
    digest = hashlib.sha256("+".join(canonical_order(style_set)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < holdout


def split_sets(k: int, holdout: float = 0.25, slugs=None
               ) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(train, held out) sets of k styles; single styles are all train."""
    sets = style_sets(k, slugs)
    if k == 1:
        return sets, []
    return ([s for s in sets if not is_held_out(s, holdout)],
            [s for s in sets if is_held_out(s, holdout)])


class GateHooks:
    """Forward pre-hooks that give each PEFT LoRA layer its per-sample gates.

    `set(names, gates)`: gates (batch, layers, k) for adapters `names`; layer i gets
    scaling[name] = gates[:, i, j] shaped to broadcast over its output."""

    def __init__(self, layers) -> None:
        self.layers = layers  # [(path, LoraLayer)]
        self.names: list[str] = []
        self.gates: torch.Tensor | None = None
        self.handles = [layer.register_forward_pre_hook(self._hook(i))
                        for i, (_, layer) in enumerate(layers)]

    def _hook(self, index: int):
        def hook(module, args):
            x = args[0]
            for j, name in enumerate(self.names):
                if name in module.lora_A:
                    module.scaling[name] = self.gates[:, index, j].reshape(
                        -1, *[1] * (x.ndim - 1))
        return hook

    def set(self, names: list[str], gates: torch.Tensor) -> None:
        self.names, self.gates = names, gates

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class CompositionData:
    """Batches of one style set: latents, text states, pooled prompt embeddings."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    @torch.no_grad()
    def batch(self, rng: np.random.Generator, n: int, slugs) -> tuple[torch.Tensor, ...]:
        images, captions = world_batch(rng, n, list(slugs))
        pipe = self.pipe
        latents = pipe.vae.encode(torch.from_numpy(to_tensor_layout(images))).latent_dist.mode()
        ids = pipe.tokenizer(captions, padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        text = pipe.text_encoder(ids)
        return (latents * pipe.vae.config.scaling_factor, text.last_hidden_state,
                text.pooler_output.float())


def train_gate_network(engine, uses: dict, config: GateTrainingConfig | None = None,
                       progress: Progress | None = None) -> tuple[GateNetwork, dict]:
    """Train a gate network for the LoRAs `uses` (slug → fusion.engine.LoraUse) on `engine`.

    Returns the network and a report: split, eval losses (merge = all gates 1, vs learned)
    on held-out sets, timing."""
    from diffusers import DDPMScheduler

    config = config or GateTrainingConfig()
    started = time.time()
    pipe = engine.base.pipe
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    slugs = sorted(uses)
    # 1. every LoRA's vector (its frequency profile) and adapter
    vectors = {s: torch.tensor(lora_vector(engine.profile(uses[s])), dtype=torch.float32)
               for s in slugs}
    with torch.no_grad():
        active = {s: ActiveLora(engine.adapters.ensure(uses[s].lora), uses[s].lora)
                  for s in slugs}
    # 2. the UNet's LoRA layers, their features, and hooks carrying the gates
    layers = [(p, layer) for c, p, layer in engine.adapters.named_layers() if c == "unet"]
    unet_order = [t.split(".", 1)[1] for t in engine.base.table.order if t.startswith("unet.")]
    features = layer_feature_matrix([p for p, _ in layers], unet_order,
                                    len(pipe.unet.config.block_out_channels))
    hooks = GateHooks(layers)
    net = GateNetwork(GateNetworkConfig(
        text_dim=pipe.text_encoder.config.hidden_size, lora_dim=len(next(iter(
            vectors.values()))), lora_features="frequency16",
        base_fingerprint=base_fingerprint(pipe)))
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    train_steps = noise.config.num_train_timesteps
    data = CompositionData(pipe)
    splits = {k: split_sets(k, config.holdout, slugs) for k in (1, 2, 3)}

    def loss_of(style_set, batch, t, eps, gates_override=None) -> torch.Tensor:
        latents, hidden, pooled = batch
        names = [active[s].adapter for s in style_set]
        scales = LayerScales(engine.adapters, [active[s] for s in style_set], lambda *a: 1.0)
        pipe.unet.requires_grad_(False)  # set_adapter marks adapters trainable again
        gates = gates_override if gates_override is not None else net(
            features, t, pooled, torch.stack([vectors[s] for s in style_set]))
        hooks.set(names, gates)
        try:
            prediction = pipe.unet(noise.add_noise(latents, eps, t), t, hidden).sample
        finally:
            scales.release()
        return F.mse_loss(prediction, diffusion_target(noise, latents, eps, t))

    # 3. a fixed held-out evaluation: sets never trained on, their own scenes and noise
    eval_rng = np.random.default_rng(config.seed + 1)
    eval_cases = []
    for k in (2, 3):
        held = splits[k][1]
        for i in eval_rng.permutation(len(held))[: config.eval_sets // 2]:
            batch = data.batch(eval_rng, config.eval_images, held[int(i)])
            g = torch.Generator().manual_seed(int(i))
            t = torch.randint(0, train_steps, (config.eval_images,), generator=g)
            eps = torch.randn(batch[0].shape, generator=g)
            eval_cases.append((k, held[int(i)], batch, t, eps))

    def evaluate(learned: bool) -> dict[str, float]:
        losses: dict[int, list[float]] = {2: [], 3: []}
        with torch.no_grad():
            for k, style_set, batch, t, eps in eval_cases:
                ones = None if learned else torch.ones(len(t), len(layers), k)
                losses[k].append(loss_of(style_set, batch, t, eps, ones).item())
        return {f"k{k}": float(np.mean(v)) for k, v in losses.items() if v}

    merge_eval = evaluate(learned=False)
    # 4. train: one style set per step, per-sample timesteps
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    for step in range(config.steps):
        k = int(rng.choice(3, p=np.asarray(config.set_sizes) / sum(config.set_sizes))) + 1
        train = splits[k][0]
        style_set = train[int(rng.integers(len(train)))]
        batch = data.batch(rng, config.batch, style_set)
        t = torch.randint(0, train_steps, (config.batch,), generator=generator)
        eps = torch.randn(batch[0].shape, generator=generator)
        loss = loss_of(style_set, batch, t, eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if progress:
            progress(step + 1, config.steps, loss.item())
    net.eval()
    learned_eval = evaluate(learned=True)
    hooks.remove()
    for _, layer in layers:  # plain float scalings again for inference
        for name in layer.scaling:
            layer.scaling[name] = 1.0
    report = {
        "training": {**asdict(config), "seconds": round(time.time() - started, 1),
                     "final_loss_mean_last_50": float(np.mean(history[-50:])),
                     "layers": len(layers), "loras": slugs},
        "eval_loss_heldout": {"merge": merge_eval, "learned": learned_eval,
                              "sets": [list(c[1]) for c in eval_cases]},
        "split": {
            "rule": f"2- and 3-style sets with sha256('+'.join(canonical order))[:8]/2^64 < "
                    f"{config.holdout} are held out; single styles are all trained on",
            "train_scene_seed": config.seed, "eval_scene_seed": config.seed + 1,
            "held_out": {str(k): [list(s) for s in splits[k][1]] for k in (2, 3)},
            "train_counts": {str(k): len(splits[k][0]) for k in (1, 2, 3)},
        },
    }
    return net, report


def main(argv: list[str] | None = None) -> None:
    import os

    from fusion.base import load_base
    from fusion.engine import GenerationEngine, LoraUse
    from styles.reader import ReadOptions, read_lora
    from styles.starter.paths import PIPELINE_DIR, STARTER_DIR, starter_loras

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=GateTrainingConfig.steps)
    parser.add_argument("--batch", type=int, default=GateTrainingConfig.batch)
    parser.add_argument("--lr", type=float, default=GateTrainingConfig.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(STARTER_DIR / "gates"))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS",
                                                                            1)))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    files = starter_loras()
    if not files:
        raise SystemExit("no starter LoRAs: build them first (loratlas starter build "
                         "--stages loras)")
    base = load_base(PIPELINE_DIR, device="cpu")
    base.pipe.set_progress_bar_config(disable=True)
    engine = GenerationEngine(base, adapter_capacity=len(files) + 4, gate_network=None)
    uses = {slug: LoraUse(read_lora(path, ReadOptions(base_table=base.table)), slug)
            for slug, path in files.items()}

    def progress(step: int, total: int, loss: float) -> None:
        if step % 25 == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.4f}", flush=True)

    config = GateTrainingConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    net, report = train_gate_network(engine, uses, config, progress)
    report["profiles"] = {slug: engine.profile(use) for slug, use in uses.items()}
    report["command"] = ("OMP_NUM_THREADS=1 .venv/bin/python -m fusion.gate_training "
                         f"--steps {args.steps} --batch {args.batch} --lr {args.lr} "
                         f"--seed {args.seed}")
    net.save(args.out, report)
    print(json.dumps({"eval_loss_heldout": report["eval_loss_heldout"]["merge"],
                      "learned": report["eval_loss_heldout"]["learned"],
                      "seconds": report["training"]["seconds"]}))


if __name__ == "__main__":
    main()
