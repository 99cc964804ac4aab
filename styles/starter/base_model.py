"""The starter pack's own small text-to-image model: a real AutoencoderKL, UNet2DConditionModel
and CLIPTextModel (with the real CLIP tokenizer), trained on unstyled world images."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from styles.starter.data import to_tensor_layout, world_batch
from styles.starter.paths import CROSS_ATTENTION_DIM, IMAGE_SIZE, MODEL_CARD
from styles.starter.text_tower import open_clip_to_transformers, starter_clip_state
from styles.tokenizer import clip_tokenizer, compact_tokenizer_folder, write_clip_tokenizer_files

VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=8, layers_per_block=1,
                  block_out_channels=(16, 32, 64), norm_num_groups=8,
                  down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, sample_size=IMAGE_SIZE)
UNET_CONFIG = dict(sample_size=IMAGE_SIZE // 4, in_channels=8, out_channels=8,
                   block_out_channels=(64, 128, 128), layers_per_block=1,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                     "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   cross_attention_dim=CROSS_ATTENTION_DIM, attention_head_dim=8,
                   norm_num_groups=16)
# The text encoder is the starter open_clip model's text tower, converted to CLIPTextModel and
# frozen, as SD 1.x uses OpenAI's CLIP: trained from scratch with the UNet, the text pathway
# stayed flat (prompts changed the UNet's prediction by 0.3% after 750 steps).
TEXT_CONFIG = dict(hidden_size=CROSS_ATTENTION_DIM, intermediate_size=4 * CROSS_ATTENTION_DIM,
                   num_hidden_layers=4, num_attention_heads=4, vocab_size=49408,
                   max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                   pad_token_id=49407, projection_dim=CROSS_ATTENTION_DIM, hidden_act="gelu",
                   layer_norm_eps=1e-5)
NOISE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
             beta_schedule="scaled_linear")
# SD's schedule leaves signal at the last step (alpha_bar 0.0047): on a 16x16 latent the mean
# of each channel of x_T then still carries the image's overall colour, the model learns to
# read the background from the noise, and at sampling time (pure noise) the background comes
# from the seed, whatever a LoRA says. Zero terminal SNR with v-prediction (Lin et al., "Common
# Diffusion Noise Schedules and Sample Steps are Flawed", 2024) removes that leak; sampling
# then starts from the last timestep ("trailing" spacing).
SCHEDULE = dict(NOISE, rescale_betas_zero_snr=True, prediction_type="v_prediction")
SAMPLING = dict(SCHEDULE, timestep_spacing="trailing")
# The guidance scale the pack recommends (read by fusion.base.recommended_guidance): its LoRAs'
# styles show far more well below SD's 7.5, and the base still draws 98% right at 2.0
# (benchmarks/guidance.py).
GUIDANCE = 2.0
Progress = Callable[[int, int, float], None]  # (step, total, loss)


def diffusion_target(noise, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
                     ) -> torch.Tensor:
    """What the UNet is trained to predict under `noise` (a diffusers scheduler): the noise
    for epsilon-prediction, the velocity for v-prediction."""
    kind = noise.config.prediction_type
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return noise.get_velocity(x0, eps, t)
    raise ValueError(f"prediction_type {kind!r} is not supported (epsilon or v_prediction)")


def diffusion_loss(unet, noise, x0: torch.Tensor, cond: torch.Tensor,
                   generator: torch.Generator, weights: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """The denoising loss of `unet` on clean latents `x0` under `noise`, at random timesteps;
    `weights` (broadcast over the latents) weigh each element's squared error."""
    eps = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, noise.config.num_train_timesteps, (len(x0),), generator=generator)
    prediction = unet(noise.add_noise(x0, eps, t), t, cond).sample
    target = diffusion_target(noise, x0, eps, t)
    if weights is None:
        return F.mse_loss(prediction, target)
    return (weights * (prediction - target) ** 2).mean()


def _checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)  # our own training state, never a user file
    tmp.replace(path)


def _optimise(optimizer, loss: torch.Tensor, clip_params: list | None = None) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
    optimizer.step()


def _after_step(step: int, steps: int, loss: torch.Tensor, progress: Progress | None,
                state_path: Path, state: Callable[[], dict], every: int = 250) -> None:
    """Report progress; checkpoint every `every` steps and at the end (resumable)."""
    if progress:
        progress(step + 1, steps, loss.item())
    if (step + 1) % every == 0 or step + 1 == steps:
        _checkpoint(state_path, {**state(), "step": step + 1})


def _resume(path: Path) -> dict | None:
    # weights_only: the state holds tensors and numbers only
    return torch.load(path, weights_only=True) if path.is_file() else None


def train_vae(work: Path, steps: int = 1200, batch: int = 16, seed: int = 0, lr: float = 1e-3,
              progress: Progress | None = None):
    """A small AutoencoderKL (64×64×3 ↔ 16×16×8) on styled and unstyled images; a low-pass
    term keeps colors exact (the base model is judged on them). With four latent channels,
    color lost out to texture: hues collapsed onto one warm-cool axis."""
    from diffusers import AutoencoderKL

    from styles.starter.looks import STYLES, clashing_pairs

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    state_path = work / "vae.pt"
    start = 0
    if state := _resume(state_path):
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    rng = np.random.default_rng(seed + start)
    slugs = sorted(STYLES)
    for step in range(start, steps):
        for group in optimizer.param_groups:  # warm-up, then cosine decay to 5%
            group["lr"] = lr * min(1.0, (step + 1) / 100) * float(
                0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / steps)))
        chosen = [] if rng.random() < 0.6 else list(rng.choice(slugs, rng.integers(1, 3),
                                                              replace=False))
        if clashing_pairs(chosen):
            chosen = chosen[:1]
        images, _ = world_batch(rng, batch, chosen)
        x = torch.from_numpy(to_tensor_layout(images))
        posterior = vae.encode(x).latent_dist
        # decode the mean: sampling with a tiny KL weight squeezed chroma into one axis
        recon = vae.decode(posterior.mode()).sample
        kl = posterior.kl().mean() / x[0].numel()
        low = F.mse_loss(F.avg_pool2d(recon, 4), F.avg_pool2d(x, 4))
        loss = F.l1_loss(recon, x) + 0.5 * F.mse_loss(recon, x) + 2.0 * low + 1e-5 * kl
        _optimise(optimizer, loss)
        _after_step(step, steps, loss, progress, state_path,
                    lambda: {"model": vae.state_dict(), "optimizer": optimizer.state_dict()})
    vae.eval()
    with torch.no_grad():  # SD's scaling factor: latents scaled to unit variance
        images, _ = world_batch(np.random.default_rng(seed + 99), 256)
        latents = vae.encode(torch.from_numpy(to_tensor_layout(images))).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def text_encoder_from_starter_clip(clip_dir: Path):
    """The open_clip text tower as a transformers CLIPTextModel (same maths: pre-LN blocks,
    causal mask, exact GELU)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    state = open_clip_to_transformers(starter_clip_state(clip_dir))
    model = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval().requires_grad_(False)


def encode_pool(vae, tokenizer, size: int, seed: int, batch: int = 256,
                draw: Callable = world_batch) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Scaled latents, token ids and captions of `size` unstyled scenes (`draw(rng, n)` gives
    images and captions: `world_batch` by default)."""
    rng = np.random.default_rng(seed)
    latents, captions = [], []
    with torch.no_grad():
        for start in range(0, size, batch):
            images, caps = draw(rng, min(batch, size - start))
            x = torch.from_numpy(to_tensor_layout(images))
            latents.append(vae.encode(x).latent_dist.mode() * vae.config.scaling_factor)
            captions += caps
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    return torch.cat(latents), ids, captions


def train_unet(work: Path, vae, tokenizer, text_encoder, steps: int = 2500, batch: int = 32,
               seed: int = 0, pool_size: int = 24000, progress: Progress | None = None,
               start_from=None, lr: float = 4e-4, checkpoint: str = "unet-vpred.pt",
               draw: Callable = world_batch):
    """The UNet, trained with the diffusion loss (zero terminal SNR, v-prediction) under the
    frozen text encoder; 10% empty captions teach the unconditional branch classifier-free
    guidance needs. `draw` makes the training pool (`encode_pool`). `start_from` (a UNet)
    fine-tunes it instead of starting from scratch, as the shipped base was moved from
    epsilon-prediction to this schedule. The checkpoint's name is the schedule's, so an
    epsilon run's `unet.pt` is never resumed under this loss."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    if start_from is not None:
        unet.load_state_dict({k: v.float() for k, v in start_from.state_dict().items()})
    noise = DDPMScheduler(**SCHEDULE)
    params = list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    state_path = work / checkpoint
    start = 0
    if state := _resume(state_path):
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    latents, ids, _ = encode_pool(vae, tokenizer, pool_size, seed + 1, draw=draw)
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = torch.cat([text_encoder(ids[i:i + 512]).last_hidden_state
                            for i in range(0, len(ids), 512)])
        empty = text_encoder(empty_ids).last_hidden_state
    generator = torch.Generator().manual_seed(seed + start)
    warmup = 50 if start_from is not None else 200
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - s / steps))
    for _ in range(start):
        scheduler.step()
    unet.train()
    for step in range(start, steps):
        index = torch.randint(0, len(latents), (batch,), generator=generator)
        x0, cond = latents[index], hidden[index].clone()
        drop = torch.rand(batch, generator=generator) < 0.1
        cond[drop] = empty
        loss = diffusion_loss(unet, noise, x0, cond, generator)
        _optimise(optimizer, loss, params)
        scheduler.step()
        _after_step(step, steps, loss, progress, state_path,
                    lambda: {"unet": unet.state_dict(), "optimizer": optimizer.state_dict()})
    return unet.eval()


def save_pipeline(folder: Path, vae, unet, text_encoder, tokenizer_dir: Path,
                  info: dict) -> Path:
    """A standard diffusers folder that StableDiffusionPipeline.from_pretrained loads."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler(**SAMPLING)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, unet=unet,
                                   tokenizer=clip_tokenizer(str(tokenizer_dir)),
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16)
    tmp = folder.with_name(folder.name + ".tmp")
    pipe.save_pretrained(tmp)
    compact_tokenizer_folder(tmp / "tokenizer")
    for config in tmp.glob("*/config.json"):  # a component loaded from disk names its folder
        fields = json.loads(config.read_text())
        if fields.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    info = {**info, "guidance_scale": GUIDANCE}
    (tmp / MODEL_CARD).write_text(json.dumps(info, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder


def build_base(folder: Path, work: Path, vae_steps: int, unet_steps: int, seed: int = 0,
               progress_factory: Callable[[str], Progress] | None = None) -> Path:
    """Train the VAE, then the UNet and text encoder, and save the pipeline."""
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tokenizer_dir = write_clip_tokenizer_files(work / "tokenizer")
    tokenizer = clip_tokenizer(str(tokenizer_dir))
    from styles.starter.paths import CLIP_DIR

    vae = train_vae(work, vae_steps, seed=seed,
                    progress=progress_factory("vae") if progress_factory else None)
    text_encoder = text_encoder_from_starter_clip(CLIP_DIR)
    unet = train_unet(work, vae, tokenizer, text_encoder, unet_steps, seed=seed,
                      progress=progress_factory("unet") if progress_factory else None)
    info = {"vae_steps": vae_steps, "unet_steps": unet_steps, "seed": seed,
            "seconds": round(time.time() - started, 1), "image_size": IMAGE_SIZE,
            "prediction_type": SCHEDULE["prediction_type"]}
    return save_pipeline(folder, vae, unet, text_encoder, tokenizer_dir, info)


def convert_base(folder: Path, work: Path, steps: int, seed: int = 0,
                 progress: Progress | None = None) -> Path:
    """Fine-tune an epsilon-prediction starter base (the pack before zero terminal SNR) into
    `SCHEDULE`, keeping its VAE and text encoder, and save it in place."""
    from diffusers import StableDiffusionPipeline

    started = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    info = json.loads((folder / MODEL_CARD).read_text())
    unet = train_unet(work, pipe.vae, pipe.tokenizer, pipe.text_encoder, steps, seed=seed + 7,
                      progress=progress, start_from=pipe.unet, lr=2e-4,
                      checkpoint="unet-convert.pt")
    info.update(prediction_type=SCHEDULE["prediction_type"], schedule_steps=steps,
                schedule_seconds=round(time.time() - started, 1))
    tokenizer_dir = write_clip_tokenizer_files(work / "tokenizer")
    return save_pipeline(folder, pipe.vae, unet, pipe.text_encoder, tokenizer_dir, info)


STYLE_WORD_SHARE = 0.5  # captions that also describe styles the image does not have


def tune_style_words(folder: Path, work: Path, steps: int, seed: int = 0,
                     progress: Progress | None = None, pool_size: int = 24000) -> Path:
    """Fine-tune the base's UNet on unstyled scenes whose captions often also describe one to
    three styles (`style_word_batch`), and save it in place.

    Trained only on plain captions, the base read the words of style descriptions ("big square
    cells like an arcade screen") as content: with a three-style prompt it drew the prompted
    shape and colour in 7.5% of images against 100% with the plain caption. Real bases know
    style words as style; here they learn that such words leave the content alone, and the
    style LoRAs (retrained on this base) give them their look. Measured and not shipped: the
    words view of retrieval loses its signal on such a base
    (benchmarks/results/style_word_base.md)."""
    from diffusers import StableDiffusionPipeline

    from styles.starter.data import style_word_batch
    from styles.starter.looks import STYLES

    started = time.time()
    work.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    info = json.loads((folder / MODEL_CARD).read_text())
    slugs = sorted(STYLES)
    unet = train_unet(work, pipe.vae, pipe.tokenizer, pipe.text_encoder, steps, seed=seed + 11,
                      progress=progress, start_from=pipe.unet, lr=2e-4,
                      checkpoint="unet-style-words.pt", pool_size=pool_size,
                      draw=lambda rng, n: style_word_batch(rng, n, slugs, STYLE_WORD_SHARE))
    info.update(style_word_steps=steps, style_word_seconds=round(time.time() - started, 1))
    tokenizer_dir = write_clip_tokenizer_files(work / "tokenizer")
    return save_pipeline(folder, pipe.vae, unet, pipe.text_encoder, tokenizer_dir, info)
