"""A small open_clip model (`loratlas-starter-clip`) trained on the starter world, and its tools."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from safetensors.torch import save_file

from styles.starter import world
from styles.starter.looks import STYLES, apply_styles, clashing_pairs
from styles.starter.paths import CLIP_CONFIG_FILE, CLIP_WEIGHTS_FILE
from styles.starter.text_tower import starter_clip_state
from styles.starter.world import Scene, render_scene, sample_scene

MODEL_NAME = "loratlas-starter-clip"
IMAGE_SIZE = 64
HELD_OUT_PHRASES = 2  # STYLES[s].phrases[-2:] never appear in training texts (kept for eval)
WEIGHTS_FILE = CLIP_WEIGHTS_FILE
CONFIG_FILE = CLIP_CONFIG_FILE
CHECKPOINT_FILE = "checkpoint.pt"
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "data" / "starter" / "open_clip"
EVAL_SEED = 987_654_321  # evaluation scenes come from a stream training never draws from
# Text width 96 keeps the 49408-row token embedding (most of the weights) under the 15 MB fp16
# budget. Vision: a small ModifiedResNet, ~2x faster per step here than a 4-layer ViT on 8x8
# patches, and it learns shapes far sooner (that ViT was at chance on shapes after 150 steps).
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [2, 2, 2, 2], "width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 96, "heads": 4, "layers": 4},
}
PREPROCESS_CFG: dict[str, Any] = {
    "size": IMAGE_SIZE, "mode": "RGB", "mean": list(open_clip.OPENAI_DATASET_MEAN),
    "std": list(open_clip.OPENAI_DATASET_STD), "interpolation": "bicubic",
    "resize_mode": "shortest", "fill_color": 0,
}
_registered: str | None = None


def register_starter_config(model_cfg: dict[str, Any] | None = None) -> str:
    """Register `loratlas-starter-clip` with open_clip (add_model_config) and return the name."""
    global _registered
    cfg = MODEL_CFG if model_cfg is None else model_cfg
    text = json.dumps(cfg, sort_keys=True, indent=2)
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    if _registered != digest or open_clip.get_model_config(MODEL_NAME) is None:
        folder = Path(tempfile.gettempdir()) / "loratlas-open-clip" / digest
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{MODEL_NAME}.json"
        if not path.is_file() or path.read_text() != text:
            (tmp := folder / f".{os.getpid()}.tmp").write_text(text)
            os.replace(tmp, path)
        open_clip.add_model_config(path)
        _registered = digest
    return MODEL_NAME


def build_model(model_cfg: dict[str, Any] | None = None) -> torch.nn.Module:
    """A randomly initialised starter CLIP (fp32, CPU) created by open_clip from the config."""
    name = register_starter_config(model_cfg)
    model, _, _ = open_clip.create_model_and_transforms(name, load_weights=False)
    return model


def images_to_tensor(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """(n, 64, 64, 3) floats in [0, 1] → (n, 3, 64, 64) normalised with the model's mean/std."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    mean, std = (torch.tensor(cfg[k]).float().view(1, 3, 1, 1) for k in ("mean", "std"))
    return (x - mean) / std


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer: Callable, texts: Sequence[str],
                 batch_size: int = 256) -> np.ndarray:
    """L2-normalised text embeddings, shape (n, embed_dim)."""
    model.eval()
    out = [model.encode_text(tokenizer(list(texts[i:i + batch_size])), normalize=True)
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out).float().numpy()


@torch.no_grad()
def encode_images(model: torch.nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """L2-normalised image embeddings of (n, 64, 64, 3) images in [0, 1], shape (n, embed_dim)."""
    model.eval()
    out = [model.encode_image(images_to_tensor(model, images[i:i + batch_size]), normalize=True)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).float().numpy()


def _encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor, chunks: int = 4
                         ) -> torch.Tensor:
    """CLIP.encode_text, normalised, on length-sorted chunks each cut after its last EOT.

    Same output (causal mask, EOT pooling) at a fraction of the cost for short captions."""
    eot = tokens.argmax(dim=-1)
    order = torch.argsort(eot)
    parts = []
    for idx in order.chunk(chunks):
        n = int(eot[idx].max()) + 1
        x = model.token_embedding(tokens[idx, :n]) + model.positional_embedding[:n]
        x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
        parts.append(model.ln_final(x)[torch.arange(len(idx)), eot[idx]] @ model.text_projection)
    return F.normalize(torch.cat(parts)[torch.argsort(order)], dim=-1)


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    """One option, uniformly."""
    return options[int(rng.integers(len(options)))]


def _describe_style(slug: str, rng: np.random.Generator) -> str:
    """A training-time way of naming a style (never one of its held-out phrases)."""
    spec = STYLES[slug]
    r = rng.random()
    if r < 0.55 or (r >= 0.85 and spec.trigger is None):
        return _pick(spec.phrases[:-HELD_OUT_PHRASES], rng)
    name = spec.name.lower()
    if r < 0.75:
        return _pick((f"{name} style", f"in the style of {name}", name, f"{name} look"), rng)
    return spec.description if r < 0.85 else str(spec.trigger)


def training_caption(scene: Scene, slugs: Sequence[str], rng: np.random.Generator,
                     style_only: float = 0.3, shape_only: float = 0.15) -> str:
    """Caption like `styled_caption` minus held-out phrases; sometimes only the style or shape."""
    if len(slugs) == 1 and rng.random() < style_only:
        return _describe_style(slugs[0], rng)
    if not slugs and len(scene.objects) == 1 and rng.random() < shape_only:
        shape = _pick(world.SHAPE_SYNONYMS[scene.objects[0].shape], rng)
        return f"{'an' if shape[0] in 'aeiou' else 'a'} {shape}"
    content = world.caption(scene, rng)
    if not slugs:
        return content
    ds = [_describe_style(s, rng) for s in rng.permutation(list(slugs))]
    joined_and = ds[0] if len(ds) == 1 else ", ".join(ds[:-1]) + " and " + ds[-1]
    templates = (f"{content}, {', '.join(ds)}", f"{content}, {joined_and}",
                 f"{content} {joined_and}", f"{', '.join(ds)}: {content}",
                 f"{content}; {'; '.join(ds)}")
    return _pick(templates, rng)


def sample_styles(rng: np.random.Generator, p_plain: float = 0.35) -> list[str]:
    """No style (p_plain), else 1–3 styles (50/30/20%) with no clashing pair."""
    if rng.random() < p_plain:
        return []
    k = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    chosen: list[str] = []
    for slug in rng.permutation(list(STYLES)):
        if len(chosen) < k and not clashing_pairs([*chosen, str(slug)]):
            chosen.append(str(slug))
    return chosen


Item = tuple[Scene, list[str], np.ndarray]


def _sample_group(rng: np.random.Generator, p_shape: float = 0.5, p_style: float = 0.2
                  ) -> list[Item]:
    """A fresh world sample, often with hard-negative siblings: other main shapes or styles."""
    scene = sample_scene(rng)
    slugs = sample_styles(rng)
    seed = int(rng.integers(1 << 30))
    variants = [(scene, slugs)]
    r = rng.random()
    if r < p_shape:
        main = scene.objects[0]
        others = [s for s in world.SHAPES if s != main.shape]
        for shape in rng.choice(others, size=int(rng.integers(1, 3)), replace=False):
            obj = replace(main, shape=str(shape))
            variants.append((Scene((obj, *scene.objects[1:]), scene.background), slugs))
    elif r < p_shape + p_style:
        other_slugs = sample_styles(rng, p_plain=0.0 if not slugs else 0.35)
        if sorted(other_slugs) != sorted(slugs):
            variants.append((scene, other_slugs))
    out = []
    for sc, sl in variants:
        image = render_scene(sc, IMAGE_SIZE)
        out.append((sc, sl, apply_styles(image, sl, seed=seed, scene=sc) if sl else image))
    return out


class _Pool:
    """Ring buffer of sample groups: each step adds fresh groups and samples a batch of groups."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.groups = [_sample_group(rng) for _ in range(size)]
        self.next = 0

    def batch(self, rng: np.random.Generator, n: int, fresh: int) -> tuple[np.ndarray, list[str]]:
        """n samples (images, freshly drawn captions) after replacing `fresh` old groups."""
        for _ in range(fresh):
            self.groups[self.next] = _sample_group(rng)
            self.next = (self.next + 1) % len(self.groups)
        picked: list[Item] = []
        for i in rng.permutation(len(self.groups)):
            picked.extend(self.groups[i][: n - len(picked)])
            if len(picked) == n:
                break
        images = np.stack([im for _, _, im in picked])
        return images, [training_caption(sc, sl, rng) for sc, sl, _ in picked]


def _lr_at(step: int, progress: float, lr: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to 5% of the peak at progress 1."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_final(model: torch.nn.Module, out_dir: Path, info: dict[str, Any]) -> Path:
    """Write fp16 safetensors weights, the open_clip config and training.json."""
    weights = {k: (v.half() if v.is_floating_point() else v).detach().contiguous().clone()
               for k, v in model.state_dict().items()}  # fp16, BN step counters stay int
    path = out_dir / WEIGHTS_FILE
    save_file(weights, str(path), metadata={"format": "pt", "model": MODEL_NAME})
    cfg = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (out_dir / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return path


def train_starter_clip(out_dir: Path, steps: int = 1200, batch_size: int = 128, seed: int = 0,
                       progress: bool = True, lr: float = 1e-3, checkpoint_every: int = 100,
                       max_seconds: float | None = None) -> Path:
    """Contrastively train the starter CLIP on world pairs (resumable); return the weights path.

    At most `steps` steps; with `max_seconds` also stop once that much wall-clock time (summed over
    resumed sessions) is spent, the cosine schedule following whichever budget runs out first.
    """
    from tqdm import tqdm

    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 7])
    model = build_model()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98),
                            eps=1e-6)
    step, prior_seconds, losses = 0, 0.0, []
    ckpt_path = out_dir / CHECKPOINT_FILE
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, prior_seconds, losses = ckpt["step"], ckpt["seconds"], list(ckpt["losses"])
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
    resumed_from = step
    loss_fn = ClipLoss()
    warmup = max(1, min(50, steps // 10))
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    start = time.perf_counter() - prior_seconds
    pool = _Pool(rng, min(1280, 10 * batch_size)) if step < steps else None

    def checkpoint() -> None:
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                 "seconds": time.perf_counter() - start, "losses": losses,
                 "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        torch.save(state, out_dir / f".{CHECKPOINT_FILE}.tmp")
        os.replace(out_dir / f".{CHECKPOINT_FILE}.tmp", ckpt_path)

    model.train()
    bar = tqdm(total=steps, initial=step, disable=not progress, desc="starter clip")
    while pool is not None and step < steps:
        if max_seconds and time.perf_counter() - start > max_seconds:
            break  # wall-clock budget spent (the schedule has annealed by then)
        elapsed = time.perf_counter() - start
        frac = max(step / steps, elapsed / max_seconds if max_seconds else 0.0)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, frac, lr, warmup)
        images, texts = pool.batch(rng, batch_size, max(1, batch_size // 5))
        image_f = model.encode_image(images_to_tensor(model, images), normalize=True)
        text_f = _encode_text_trimmed(model, tokenizer(texts))
        loss = loss_fn(image_f, text_f, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", T=f"{1 / model.logit_scale.exp().item():.3f}")
        if step % checkpoint_every == 0 or step == steps:
            checkpoint()
    bar.close()
    if pool is not None and step % checkpoint_every and step != steps:
        checkpoint()  # stopped early by max_seconds
    session = (seconds := time.perf_counter() - start) - prior_seconds
    info = {"model_name": MODEL_NAME, "steps": step, "batch_size": batch_size, "seed": seed,
            "lr": lr, "seconds": round(seconds, 1),
            "steps_per_second": round((step - resumed_from) / session, 3) if session > 0 else None,
            "final_loss": losses[-1] if losses else None,
            "final_loss_mean_last_20": float(np.mean(losses[-20:])) if losses else None,
            "temperature": 1 / model.logit_scale.exp().item(), "resumed_from_step": resumed_from,
            "torch_threads": torch.get_num_threads(), "held_out_phrases": HELD_OUT_PHRASES}
    return _save_final(model, out_dir, info)


@contextlib.contextmanager
def _quiet_random_init():
    """Hide open_clip's "No pretrained weights loaded ... initialized randomly" warning."""
    def keep(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def load_starter_clip(folder: Path, device: str = "cpu"
                      ) -> tuple[torch.nn.Module, Callable, Callable]:
    """(model, preprocess for PIL images, tokenizer) for a trained folder, built by open_clip."""
    folder = Path(folder)
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    name = register_starter_config(cfg.get("model_cfg", cfg))
    if cfg.get("text_tower"):  # the pack keeps its text tower once, in the pipeline folder
        state = starter_clip_state(folder)
        with _quiet_random_init():  # the weights are loaded on the next line
            model, _, preprocess = open_clip.create_model_and_transforms(name, load_weights=False)
        model.load_state_dict(state, strict=True)
        model.to(device)
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(folder / WEIGHTS_FILE), device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)


def _topk(sims: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest-scoring columns."""
    return float(np.mean((np.argsort(-sims, axis=1)[:, :k] == labels[:, None]).any(axis=1)))


def _centroids(model: torch.nn.Module, tokenizer: Callable,
               groups: Sequence[Sequence[str]]) -> np.ndarray:
    """Normalised mean text embedding of each group of prompts."""
    c = np.stack([encode_texts(model, tokenizer, list(g)).mean(axis=0) for g in groups])
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def evaluate_starter_clip(folder: Path, n_per_style: int = 20, n_content: int = 300,
                          seed: int = EVAL_SEED) -> dict[str, Any]:
    """Held-out style (unseen phrases) and content zero-shot accuracy; also writes eval.json."""
    model, _, tokenizer = load_starter_clip(folder := Path(folder))
    rng, slugs, images = np.random.default_rng(seed), list(STYLES), []
    for slug in slugs:
        for scene in (sample_scene(rng) for _ in range(n_per_style)):
            im = render_scene(scene, IMAGE_SIZE)
            images.append(apply_styles(im, [slug], seed=int(rng.integers(1 << 30)), scene=scene))
    img = encode_images(model, np.stack(images))
    lab = np.repeat(np.arange(len(slugs)), n_per_style)
    held = [STYLES[s].phrases[-HELD_OUT_PHRASES:] for s in slugs]
    sims = img @ _centroids(model, tokenizer, held).T
    phrase_emb = encode_texts(model, tokenizer, [p for h in held for p in h])
    phrase_lab = np.repeat(np.arange(len(slugs)), HELD_OUT_PHRASES)
    nearest = np.argsort(-(phrase_emb @ img.T), axis=1)[:, :n_per_style]
    p_at_n = float(np.mean(lab[nearest] == phrase_lab[:, None]))
    per_style = {s: float(np.mean(np.argmax(sims[lab == j], axis=1) == j))
                 for j, s in enumerate(slugs)}
    names = [[f"{STYLES[s].name.lower()} style"] for s in slugs]
    name_sims = img @ _centroids(model, tokenizer, names).T
    scenes = [sample_scene(rng, 1) for _ in range(n_content)]
    plain = encode_images(model, np.stack([render_scene(s, IMAGE_SIZE) for s in scenes]))
    shapes, color_names = world.SHAPES, list(world.COLORS)
    shape_lab = np.array([shapes.index(s.objects[0].shape) for s in scenes])
    color_lab = np.array([color_names.index(s.objects[0].color) for s in scenes])
    shape_sims = plain @ _centroids(model, tokenizer, [[f"a {s}"] for s in shapes]).T
    color_sims = plain @ _centroids(model, tokenizer, [[f"a {c} shape"] for c in color_names]).T
    ens = [[f"a {c} {s}" for s in shapes] for c in color_names]
    color_ens = plain @ _centroids(model, tokenizer, ens).T
    result = {
        "eval_seed": seed, "n_per_style": n_per_style, "n_content": n_content,
        "style_heldout_phrases_per_style": HELD_OUT_PHRASES,
        "style_top1": _topk(sims, lab, 1), "style_top3": _topk(sims, lab, 3),
        "style_phrase_to_image_precision_at_n": p_at_n,
        "style_name_top1": _topk(name_sims, lab, 1), "style_name_top3": _topk(name_sims, lab, 3),
        "shape_top1": _topk(shape_sims, shape_lab, 1),
        "color_top1": _topk(color_sims, color_lab, 1),
        "color_top1_ensemble": _topk(color_ens, color_lab, 1),
        "style_top1_per_style": per_style,
    }
    (folder / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `train` (then evaluate) or `eval` a starter CLIP folder."""
    parser = argparse.ArgumentParser(prog="python -m styles.starter.clip_model")
    parser.add_argument("command", choices=("train", "eval"))
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    for flag, kind, default in (("--steps", int, 1200), ("--batch-size", int, 128),
                                ("--lr", float, 1e-3), ("--seed", int, 0),
                                ("--max-seconds", float, 660.0)):
        parser.add_argument(flag, type=kind, default=default)
    parser.add_argument("--keep-checkpoint", action="store_true", help="keep the resume file")
    args = parser.parse_args(argv)
    if args.command == "train":
        train_starter_clip(args.out, args.steps, args.batch_size, args.seed, lr=args.lr,
                           max_seconds=args.max_seconds)
        print((args.out / "training.json").read_text())
        if not args.keep_checkpoint:
            (args.out / CHECKPOINT_FILE).unlink(missing_ok=True)
    result = evaluate_starter_clip(args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "style_top1_per_style"}, indent=2))


if __name__ == "__main__":
    main()
