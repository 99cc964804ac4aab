"""Small CNN judges of the starter world: content (shape, colour) and styles (multi-label)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from styles.starter.looks import STYLES, apply_styles, clashing_pairs
from styles.starter.world import COLORS, SHAPES, content_labels, render_scene, sample_scene

JUDGES_DIR = Path(__file__).resolve().parents[1] / "data" / "starter" / "judges"
SLUGS: tuple[str, ...] = tuple(STYLES)
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZE = 64
# Styles that keep the main object's colour, as drawn: the colour head is trained only on
# unstyled images and images whose styles are all in here. Which styles' colour is *judged*
# is measured after training (`color_preserving_styles` in judges.json): through the VAE some
# of these lose too much for the judge to read (see accuracy.json, "rendered").
COLOR_PRESERVING_STYLES: frozenset[str] = frozenset(
    s for s in SLUGS
    if s not in {"noir", "sepia", "negative", "blueprint", "chalkboard", "line-art",
                 "pencil-sketch", "embossed", "vaporwave"}
)  # fmt: skip
CONTENT_ARCH: dict[str, Any] = {"widths": [32, 64, 128, 128], "extra": [0, 0, 1, 0]}
STYLE_ARCH: dict[str, Any] = {"widths": [32, 64, 128, 192], "extra": [0, 1, 1, 0]}
TRAIN_SET_SIZES = [0.15, 0.3, 0.3, 0.25]  # probabilities of 0, 1, 2, 3 styles per training image
_CLASH = {frozenset(p) for p in clashing_pairs(SLUGS)}
# Every image the pipeline makes comes out of its VAE decoder, which blurs away part of a
# fine texture (halftone dots, film grain); a judge that only saw crisp ground truth misses
# the style in the best image the model could ever draw. So part of the judges' data goes
# through the base model's VAE (encode, decode), and their accuracy is reported on both.
RENDERED_P = 0.5
Renderer = Callable[[np.ndarray], np.ndarray]  # uint8 (n, 64, 64, 3) → uint8, same shape


def vae_renderer(pipeline_dir: str | Path, batch: int = 256) -> Renderer:
    """Encode and decode images with the starter pipeline's VAE: what the model can render."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(pipeline_dir) / "vae", dtype=torch.float32).eval()

    @torch.no_grad()
    def render(images: np.ndarray) -> np.ndarray:
        out = np.empty_like(images)
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample
            out[i:i + batch] = ((y.clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(0, 2, 3, 1)
        return out

    return render


def _render_part(data: dict[str, np.ndarray], renderer: Renderer | None, p: float,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Send a random fraction p of the images through the renderer, in place."""
    if renderer is not None and p > 0:
        chosen = np.flatnonzero(rng.random(len(data["images"])) < p)
        if len(chosen):
            data["images"][chosen] = renderer(data["images"][chosen])
    return data


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU."""
    conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(True))


class JudgeNet(nn.Module):
    """Strided conv stages, mean+max global pooling and one linear head per output group."""

    def __init__(self, widths: Sequence[int], extra: Sequence[int], outputs: Sequence[int]):
        super().__init__()
        layers, c = [], 3
        for w, e in zip(widths, extra, strict=True):
            layers += [_block(c, w, 2)] + [_block(w, w, 1) for _ in range(e)]
            c = w
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(2 * c, n) for n in outputs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head for images (n, 3, H, W) in [0, 1]."""
        f = self.features(x * 2 - 1)
        f = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        return [h(f) for h in self.heads]


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 or float [0, 1] array -> float (n, 3, 64, 64) channels-last tensor."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
    x = x.float() / 255 if a.dtype == np.uint8 else x.float().clamp(0, 1)
    if x.shape[-1] != SIZE or x.shape[-2] != SIZE:
        x = F.interpolate(x, (SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def _save(net: nn.Module, path: Path) -> None:
    """Float tensors as fp16 safetensors."""
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous()
          for k, v in net.state_dict().items()}  # fmt: skip
    save_file(sd, str(path))


def _load(path: Path, arch: dict[str, Any], outputs: Sequence[int]) -> JudgeNet:
    """Build a JudgeNet and load fp16 weights into it (as float32), in eval mode."""
    net = JudgeNet(arch["widths"], arch["extra"], outputs)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    net.load_state_dict(sd)
    return net.eval().to(memory_format=torch.channels_last)


def sample_style_set(rng: np.random.Generator, k: int) -> list[str]:
    """k distinct styles of which no two clash (fewer if impossible)."""
    chosen: list[str] = []
    for i in rng.permutation(len(SLUGS)) if k > 0 else []:
        s = SLUGS[int(i)]
        if all(frozenset((s, c)) not in _CLASH for c in chosen):
            chosen.append(s)
        if len(chosen) >= k:
            break
    return chosen


def generate(
    rng: np.random.Generator, style_sets: Sequence[Sequence[str]], n_objects: int | None = None,
    jpeg_p: float = 0.0, desc: str | None = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Ground-truth images (uint8) and labels for one random scene per given style set."""
    n = len(style_sets)
    out = {k: np.zeros(n, np.int64) for k in ("shape", "color", "n_objects")}
    out["images"] = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    out["styles"] = np.zeros((n, len(SLUGS)), np.float32)
    for i, slugs in enumerate(tqdm(style_sets, desc=desc, disable=desc is None, leave=False)):
        scene = sample_scene(rng, n_objects)
        img = render_scene(scene, SIZE)
        if slugs:
            img = apply_styles(img, list(slugs), int(rng.integers(2**31)), scene)
        u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        if rng.random() < jpeg_p:
            buf = io.BytesIO()
            Image.fromarray(u8).save(buf, "JPEG", quality=int(rng.integers(40, 91)))
            u8 = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        lab = content_labels(scene)
        out["images"][i], out["n_objects"][i] = u8, len(scene.objects)
        out["shape"][i] = SHAPES.index(lab["shape"])
        out["color"][i] = COLOR_NAMES.index(lab["color"])
        out["styles"][i, [SLUGS.index(s) for s in slugs]] = 1.0
    return out


def _mixed_sets(rng: np.random.Generator, n: int, probs: Sequence[float]) -> list[list[str]]:
    """n style sets whose sizes 0, 1, 2, ... are drawn with the given probabilities."""
    ks = rng.choice(len(probs), size=n, p=np.asarray(probs) / sum(probs))
    return [sample_style_set(rng, int(k)) for k in ks]


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Robustness augmentation: shift/scale, blur, down-up smoothing, colour jitter, noise."""
    b = x.shape[0]
    x = x.clone(memory_format=torch.contiguous_format)

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    def subset(p: float) -> torch.Tensor:
        return torch.nonzero(u(b) < p).flatten()

    i = subset(0.6)  # shift by up to 3 px and scale by up to 8%
    if len(i):
        base = F.affine_grid(torch.eye(2, 3)[None], [1, 3, SIZE, SIZE], align_corners=False)
        shift = (u(len(i), 1, 1, 2) * 2 - 1) * (3 / 32)
        grid = base * (1 + (u(len(i), 1, 1, 1) * 2 - 1) * 0.08) + shift
        x[i] = F.grid_sample(x[i], grid, padding_mode="border", align_corners=False)
    i = subset(0.5)  # gaussian blur, sigma up to 0.9 px
    if len(i):
        n = len(i)
        sigma = u(n) * 0.8 + 0.1
        k = torch.exp(-(torch.arange(-2, 3).float()[None] ** 2) / (2 * sigma[:, None] ** 2))
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)
        y = F.pad(x[i].reshape(1, n * 3, SIZE, SIZE), (2, 2, 2, 2), mode="replicate")
        y = F.conv2d(y, k[:, None, None, :], groups=n * 3)
        x[i] = F.conv2d(y, k[:, None, :, None], groups=n * 3).reshape(n, 3, SIZE, SIZE)
    i = subset(0.15)  # JPEG-like smoothing: down- and up-sampling
    if len(i):
        lo = int(36 + u(1).item() * 20)
        small = F.interpolate(x[i], (lo, lo), mode="bilinear", antialias=True, align_corners=False)
        x[i] = F.interpolate(small, (SIZE, SIZE), mode="bilinear", align_corners=False)
    gray = x.mean(1, keepdim=True)  # saturation, contrast, channel gains, brightness
    x = gray + (x - gray) * (1 + (u(b, 1, 1, 1) * 2 - 1) * 0.15)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (1 + (u(b, 1, 1, 1) * 2 - 1) * 0.1)
    x = x * (1 + (u(b, 3, 1, 1) * 2 - 1) * 0.04) + (u(b, 1, 1, 1) * 2 - 1) * 0.05
    i = subset(0.4)  # gaussian noise, sigma up to 0.03
    if len(i):
        x[i] += torch.randn((len(i), 3, SIZE, SIZE), generator=g) * u(len(i), 1, 1, 1) * 0.03
    return x.clamp(0, 1).contiguous(memory_format=torch.channels_last)


class Judges:
    """Trained content and style judges for 64x64 starter-world images (CPU)."""

    def __init__(self, content_net: JudgeNet, style_net: JudgeNet, meta: dict[str, Any]):
        self.content_net, self.style_net, self.meta = content_net, style_net, meta
        self.thresholds = np.array([meta["thresholds"][s] for s in SLUGS], np.float32)
        self.color_preserving_styles = frozenset(meta["color_preserving_styles"])

    @classmethod
    def load(cls, folder: str | Path = JUDGES_DIR) -> Judges:
        """Load judges.json and both weight files from a folder."""
        folder = Path(folder)
        meta = json.loads((folder / "judges.json").read_text())
        content = _load(folder / "content_judge.safetensors", meta["content_arch"],
                        [len(SHAPES), len(COLORS)])  # fmt: skip
        style = _load(folder / "style_judge.safetensors", meta["style_arch"], [len(SLUGS)])
        return cls(content, style, meta)

    @torch.no_grad()
    def _run(self, net: JudgeNet, images: np.ndarray, batch: int = 256) -> list[np.ndarray]:
        """Softmax-free head outputs of a net over images, in batches."""
        x = _to_tensor(images)
        outs = [net(x[i : i + batch]) for i in range(0, len(x), batch)]
        if not outs:
            return [np.zeros((0, h.out_features), np.float32) for h in net.heads]
        return [torch.cat([o[h] for o in outs]).numpy() for h in range(len(net.heads))]

    def content_probs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shape (n, 8) and colour (n, 9) probabilities."""
        ls, lc = self._run(self.content_net, images)
        return tuple(torch.from_numpy(z).softmax(1).numpy() for z in (ls, lc))  # type: ignore

    def content(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Shape and colour of the main object of each image, with their probabilities."""
        ps, pc = self.content_probs(images)
        return [{"shape": SHAPES[int(s.argmax())], "color": COLOR_NAMES[int(c.argmax())],
                 "shape_prob": float(s.max()), "color_prob": float(c.max())}
                for s, c in zip(ps, pc, strict=True)]  # fmt: skip

    def style_scores(self, images: np.ndarray) -> np.ndarray:
        """Sigmoid score (n, 28) of every style, in STYLES order."""
        (logits,) = self._run(self.style_net, images)
        return torch.from_numpy(logits).sigmoid().numpy()

    def styles(self, images: np.ndarray) -> list[set[str]]:
        """Detected styles of each image (score >= the style's tuned threshold)."""
        hits = self.style_scores(images) >= self.thresholds
        return [{SLUGS[j] for j in np.flatnonzero(h)} for h in hits]


def _bf16_ok() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively."""
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def _fit(
    nets: dict[str, tuple[JudgeNet, Any]], data: dict[str, np.ndarray], steps: int, seed: int,
    progress: bool, batch: int = 128, lr: float = 3e-3,
) -> dict[str, Any]:  # fmt: skip
    """Train nets side by side (AdamW + one-cycle) on the same augmented random batches."""
    opts = {}
    for name, (net, _) in nets.items():
        net.train().to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(steps, 1),
                                                    pct_start=0.15)  # fmt: skip
        opts[name] = (opt, sched)
    g, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    bf16 = _bf16_ok()  # bfloat16 autocast: ~1.7x faster on CPUs with native bf16
    t0, ema = time.perf_counter(), dict.fromkeys(nets, 0.0)
    bar = tqdm(range(steps), desc="training judges", disable=not progress)
    for step in bar:
        b = np.sort(rng.choice(len(data["images"]), size=min(batch, len(data["images"])),
                               replace=False))  # fmt: skip
        x = augment(_to_tensor(data["images"][b]), g)
        for name, (net, loss_fn) in nets.items():
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                out = net(x)
            loss = loss_fn([o.float() for o in out], b)
            opt, sched = opts[name]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema[name] = loss.item() if step == 0 else 0.98 * ema[name] + 0.02 * loss.item()
        bar.set_postfix({k: f"{v:.3f}" for k, v in ema.items()})
    for net, _ in nets.values():
        net.eval()
    return {"steps": steps, "batch": batch, "lr": lr, "bf16_autocast": bf16, "final_loss_ema": ema,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def tune_thresholds(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-column threshold maximising F1 (ties go to the one nearest 0.5)."""
    grid = np.round(np.linspace(0.02, 0.98, 97), 2)
    out = np.full(scores.shape[1], 0.5, np.float32)
    for j in range(scores.shape[1]):
        pred, t = scores[:, j, None] >= grid, targets[:, j, None] > 0.5
        tp, fp, fn = (pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0)
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        best = np.flatnonzero(f1 >= f1.max() - 1e-9)
        out[j] = grid[best[np.argmin(np.abs(grid[best] - 0.5))]]
    return out


def evaluate(
    judges: Judges, seed: int = 1000, per_style: int = 120, n_plain: int = 1200,
    n_multi: int = 1000, progress: bool = True, renderer: Renderer | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Held-out accuracy of both judges on fresh ground-truth images, and, given a renderer,
    on the same images as the model's VAE renders them (`rendered`)."""
    rng, d = np.random.default_rng([seed, 77]), "eval images" if progress else None
    plain = generate(rng, [[]] * n_plain, desc=d)
    single = generate(rng, [[s] for s in SLUGS for _ in range(per_style)], desc=d)
    multi = {k: generate(rng, [sample_style_set(rng, k) for _ in range(n_multi)], desc=d)
             for k in (2, 3)}  # fmt: skip
    res = _accuracy(judges, plain, single, multi, seed)
    if renderer is not None:
        seen = [plain, single, *multi.values()]
        for data in seen:
            data["images"] = renderer(data["images"])
        res["rendered"] = _accuracy(judges, plain, single, multi, seed)
    return res


def _accuracy(judges: Judges, plain: dict[str, np.ndarray], single: dict[str, np.ndarray],
              multi: dict[int, dict[str, np.ndarray]], seed: int) -> dict[str, Any]:
    """Content accuracy, per-style recall and false positives, exact style sets."""

    def content_acc(data: dict[str, np.ndarray], mask: np.ndarray) -> tuple[float, float, int]:
        ps, pc = judges.content_probs(data["images"][mask])
        n, m = max(int(mask.sum()), 1), int(mask.sum())
        return (float((ps.argmax(1) == data["shape"][mask]).sum() / n),
                float((pc.argmax(1) == data["color"][mask]).sum() / n), m)  # fmt: skip

    def hits(data: dict[str, np.ndarray]) -> np.ndarray:
        return judges.style_scores(data["images"]) >= judges.thresholds

    shp, col, n1 = content_acc(plain, plain["n_objects"] == 1)
    hit_plain, hit_single = hits(plain), hits(single)
    res: dict[str, Any] = {"seed": seed, "unstyled": {
        "shape_top1": shp, "color_top1": col, "n": n1,
        "any_false_positive": float(hit_plain.any(1).mean()),
        "n_style": len(plain["images"])}}  # fmt: skip
    per: dict[str, dict[str, float]] = {}
    for j, s in enumerate(SLUGS):
        own = single["styles"][:, j] > 0
        sa, ca, n = content_acc(single, own & (single["n_objects"] == 1))
        per[s] = {"recall": float(hit_single[own, j].mean()),
                  "fpr_unstyled": float(hit_plain[:, j].mean()),
                  "fpr_other_styles": float(hit_single[~own, j].mean()),
                  "exact_set": float((hit_single[own] == single["styles"][own].astype(bool))
                                     .all(1).mean()),
                  "shape_top1": sa, "color_top1": ca, "n_content": n,
                  "threshold": float(judges.thresholds[j])}  # fmt: skip
    res["per_style"] = per
    keep = sorted(s for s in SLUGS if per[s]["color_top1"] >= 0.8)
    res["color_preserving_measured"] = keep
    res["styled"] = {
        "shape_top1_one_style": float(np.mean([per[s]["shape_top1"] for s in SLUGS])),
        "shape_top1_two_styles": content_acc(multi[2], multi[2]["n_objects"] == 1)[0],
        "color_top1_one_color_preserving_style": float(
            np.mean([per[s]["color_top1"] for s in keep] or [0.0])),
    }  # fmt: skip
    res["exact_set"] = {"1": float(np.mean([per[s]["exact_set"] for s in SLUGS]))}
    for k, data in multi.items():
        hit, true = hits(data), data["styles"] > 0
        res["exact_set"][str(k)] = float((hit == true).all(1).mean())
        res["exact_set"][f"{k}_recall"] = float(hit[true].mean())
    rec, fpr = (np.array([per[s][k] for s in SLUGS]) for k in ("recall", "fpr_unstyled"))
    res["summary"] = {"mean_recall": float(rec.mean()), "recall_ge_0.9": int((rec >= 0.9).sum()),
                      "max_fpr_unstyled": float(fpr.max()),
                      "fpr_le_0.05": int((fpr <= 0.05).sum())}  # fmt: skip
    return res


def train_judges(
    out_dir: Path, seed: int = 0, progress: bool = True, *, n_train: int = 48000,
    n_val: int = 3000, steps: int = 3000,
    eval_sizes: tuple[int, int, int] = (120, 1200, 1000), renderer: Renderer | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train both judges into out_dir, tune thresholds and evaluate them on a fresh seed.

    With a renderer (`vae_renderer` of the base model), a fraction RENDERED_P of the training
    and validation images goes through it, and accuracy is reported on rendered images too.
    The styles whose colour is then judged (`color_preserving_styles`) are those through which
    the content judge reads colour in at least 80% of held-out images as the model can draw
    them (rendered, given a renderer): elsewhere a colour verdict would measure the judge."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    out_dir, t0 = Path(out_dir), time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    rng, vrng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    pool = generate(rng, _mixed_sets(rng, n_train, TRAIN_SET_SIZES), jpeg_p=0.25,
                    desc="train images" if progress else None)  # fmt: skip
    val = generate(vrng, _mixed_sets(vrng, n_val, [0.2, 0.3, 0.3, 0.2]), jpeg_p=0.25,
                   desc="val images" if progress else None)  # fmt: skip
    _render_part(pool, renderer, RENDERED_P, rng)
    _render_part(val, renderer, RENDERED_P, vrng)
    gen_s = time.perf_counter() - t0

    keep = np.array([s in COLOR_PRESERVING_STYLES for s in SLUGS], np.float32)
    one_object = torch.from_numpy(pool["n_objects"] == 1).float()
    color_ok = torch.from_numpy((pool["styles"] @ (1 - keep)) == 0).float() * one_object
    shape_t, color_t = torch.from_numpy(pool["shape"]), torch.from_numpy(pool["color"])
    style_t = torch.from_numpy(pool["styles"])

    def content_loss(out: list[torch.Tensor], b: np.ndarray) -> torch.Tensor:
        one, m = one_object[b], color_ok[b]
        ls = F.cross_entropy(out[0], shape_t[b], reduction="none", label_smoothing=0.05)
        lc = F.cross_entropy(out[1], color_t[b], reduction="none", label_smoothing=0.05)
        return (ls * one).sum() / one.sum().clamp(min=1) + (lc * m).sum() / m.sum().clamp(min=1)

    def style_loss(out: list[torch.Tensor], b: np.ndarray) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out[0], style_t[b]) * len(SLUGS) / 4

    content = JudgeNet(CONTENT_ARCH["widths"], CONTENT_ARCH["extra"], [len(SHAPES), len(COLORS)])
    style = JudgeNet(STYLE_ARCH["widths"], STYLE_ARCH["extra"], [len(SLUGS)])
    stats = _fit({"content": (content, content_loss), "style": (style, style_loss)}, pool, steps,
                 seed + 11, progress)  # fmt: skip

    meta: dict[str, Any] = {"content_arch": CONTENT_ARCH, "style_arch": STYLE_ARCH,
                            "thresholds": dict.fromkeys(SLUGS, 0.5),
                            "color_preserving_styles": sorted(COLOR_PRESERVING_STYLES)}  # fmt: skip
    judges = Judges(content, style, meta)  # float32 nets, default thresholds, for tuning
    g = torch.Generator().manual_seed(seed + 13)
    vx = np.concatenate([augment(_to_tensor(val["images"][i : i + 256]), g).permute(0, 2, 3, 1)
                         .numpy() for i in range(0, n_val, 256)])  # fmt: skip
    judges.thresholds = tune_thresholds(judges.style_scores(vx), val["styles"])
    meta["thresholds"] = {s: float(t) for s, t in zip(SLUGS, judges.thresholds, strict=True)}
    # written and evaluated in a side folder, moved in at the end: a reader of out_dir meanwhile
    # sees the previous judges, never new weights with a provisional judges.json
    partial = out_dir / ".partial"
    partial.mkdir(exist_ok=True)
    _save(content, partial / "content_judge.safetensors")
    _save(style, partial / "style_judge.safetensors")
    (partial / "judges.json").write_text(json.dumps(meta, indent=1))
    train_s = time.perf_counter() - t0  # evaluation below uses the saved fp16 judges

    acc = evaluate(Judges.load(partial), seed + 1000, *eval_sizes, progress=progress,
                   renderer=renderer)
    meta.update(
        color_trained_styles=sorted(COLOR_PRESERVING_STYLES),
        color_preserving_styles=acc.get("rendered", acc)["color_preserving_measured"],
        shapes=list(SHAPES), colors=list(COLOR_NAMES), slugs=list(SLUGS), image_size=SIZE,
        training={"seed": seed, "n_train": n_train, "n_val": n_val,
                  "train_style_set_sizes_p": TRAIN_SET_SIZES, "jpeg_p": 0.25,
                  "rendered_p": RENDERED_P if renderer is not None else 0.0,
                  "content_data": "one-object scenes of the pool, 0-3 styles",
                  "fit": stats, "data_seconds": round(gen_s, 1),
                  "train_seconds": round(train_s, 1),
                  "total_seconds": round(time.perf_counter() - t0, 1),
                  "torch_threads": torch.get_num_threads()},
    )  # fmt: skip
    acc["training_seconds"] = meta["training"]["total_seconds"]
    (partial / "judges.json").write_text(json.dumps(meta, indent=1))
    (partial / "accuracy.json").write_text(json.dumps(acc, indent=1))
    for name in ("content_judge.safetensors", "style_judge.safetensors", "accuracy.json",
                 "judges.json"):  # judges.json last: the build's "judges are done" mark
        (partial / name).replace(out_dir / name)
    partial.rmdir()
    return acc


def format_accuracy(acc: dict[str, Any]) -> str:
    """Human-readable accuracy table."""
    u, st, ex = acc["unstyled"], acc["styled"], acc["exact_set"]
    lines = [f"unstyled: shape {u['shape_top1']:.3f} color {u['color_top1']:.3f} (n={u['n']}), "
             f"images with any false style {u['any_false_positive']:.3f} (n={u['n_style']})",
             f"styled shape: 1 style {st['shape_top1_one_style']:.3f}, 2 styles "
             f"{st['shape_top1_two_styles']:.3f}; colour through 1 colour-preserving style "
             f"{st['color_top1_one_color_preserving_style']:.3f}",
             f"exact style set: 1 {ex['1']:.3f}, 2 {ex['2']:.3f}, 3 {ex['3']:.3f}; recall in "
             f"2-style {ex['2_recall']:.3f}, 3-style {ex['3_recall']:.3f}",
             "style           thr  recall fpr-plain fpr-other exact  shape  color"]  # fmt: skip
    for s, p in acc["per_style"].items():
        lines.append(f"{s:15s} {p['threshold']:4.2f} {p['recall']:6.3f} {p['fpr_unstyled']:9.3f} "
                     f"{p['fpr_other_styles']:9.3f} {p['exact_set']:5.3f} {p['shape_top1']:6.3f} "
                     f"{p['color_top1']:6.3f}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":  # python -m styles.starter.judges {train|eval} [out_dir] [seed]
    import sys

    from styles.starter.paths import PIPELINE_DIR

    cmd, folder = sys.argv[1], Path(sys.argv[2]) if len(sys.argv) > 2 else JUDGES_DIR
    seed_ = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    torch.set_num_threads(1)
    render = vae_renderer(PIPELINE_DIR) if (PIPELINE_DIR / "vae").is_dir() else None
    if cmd == "train":
        acc_ = train_judges(folder, seed_, renderer=render)
    else:
        acc_ = evaluate(Judges.load(folder), seed_ + 1000, renderer=render)
    print(format_accuracy(acc_))
    if "rendered" in acc_:
        print("\nthrough the base model's VAE:\n" + format_accuracy(acc_["rendered"]))
