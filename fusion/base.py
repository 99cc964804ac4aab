"""Load a base Stable Diffusion pipeline from a hub id, a local folder or a single file."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from styles.architectures import ModuleTable
from styles.families import CROSS_ATTENTION_WIDTH

log = logging.getLogger(__name__)
DEFAULT_GUIDANCE = 7.5  # diffusers' Stable Diffusion default


class BaseModelError(Exception):
    """The base model could not be loaded; the message says which and what to do."""


@dataclass
class BaseModel:
    """A loaded pipeline, what family it is, and the table of its adaptable modules."""

    pipe: object  # a diffusers StableDiffusion(XL)Pipeline
    source: str
    family: str
    table: ModuleTable
    device: str
    dtype: torch.dtype
    guidance_scale: float = DEFAULT_GUIDANCE  # what a request gets unless it names one

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        names = ("unet", "text_encoder", "text_encoder_2")
        return {n: getattr(self.pipe, n) for n in names if getattr(self.pipe, n, None) is not None}


def pick_device(device: str | None = None) -> tuple[str, torch.dtype]:
    """CUDA with fp16 when present, else the CPU with fp32."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BaseModelError(f"device '{device}' was asked for but no CUDA GPU is present; "
                             "use --device cpu.")
    return device, (torch.float16 if device.startswith("cuda") else torch.float32)


def family_of(pipe: object) -> str:
    cross = pipe.unet.config.cross_attention_dim
    cross = cross[0] if isinstance(cross, list | tuple) else cross
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return CROSS_ATTENTION_WIDTH.get(int(cross), "unknown")


def _pipeline_class(folder: Path | None):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if folder is not None and (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text())
        if "XL" in index.get("_class_name", "") or "text_encoder_2" in index:
            return StableDiffusionXLPipeline
    return StableDiffusionPipeline


def load_base(source: str | Path, device: str | None = None, config: str | Path | None = None,
              xl: bool = False) -> BaseModel:
    """Load a base pipeline; `config` is a diffusers folder that describes a single-file model."""
    from diffusers import StableDiffusionXLPipeline

    device, dtype = pick_device(device)
    path = Path(source)
    try:
        if path.is_dir():
            pipe = _pipeline_class(path).from_pretrained(path, dtype=dtype)
        elif path.is_file() and path.suffix in (".safetensors", ".ckpt"):
            if path.suffix == ".ckpt":
                raise BaseModelError(f"{path.name}: .ckpt checkpoints are pickles and are never "
                                     "loaded; convert it to .safetensors.")
            cls = StableDiffusionXLPipeline if xl else _pipeline_class(
                Path(config) if config else None)
            kwargs = {"config": str(config)} if config else {}
            pipe = cls.from_single_file(str(path), dtype=dtype, **kwargs)
        else:
            pipe = _pipeline_class(None).from_pretrained(str(source), dtype=dtype)
    except BaseModelError:
        raise
    except (OSError, ValueError) as exc:
        raise BaseModelError(
            f"could not load the base model '{source}': {str(exc).rstrip('.')}. Give a local "
            "diffusers folder, a .safetensors checkpoint (with --base-config DIR when offline), "
            "or a hub id when online.") from exc
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if device.startswith("cuda"):
        _enable_xformers(pipe)
    family = family_of(pipe)
    components = {n: getattr(pipe, n) for n in ("unet", "text_encoder", "text_encoder_2")
                  if getattr(pipe, n, None) is not None}
    return BaseModel(pipe, str(source), family, ModuleTable.from_components(family, components),
                     device, dtype, recommended_guidance(path))


def recommended_guidance(folder: Path) -> float:
    """The guidance scale the model's card in `folder` recommends, else diffusers' default.

    The starter pack records its own (2.0): its LoRAs' styles show far more there than at
    Stable Diffusion's 7.5 (benchmarks/results/guidance.md)."""
    from styles.starter.paths import MODEL_CARD

    card = folder / MODEL_CARD
    if not card.is_file():
        return DEFAULT_GUIDANCE
    try:
        value = json.loads(card.read_text()).get("guidance_scale", DEFAULT_GUIDANCE)
    except (ValueError, AttributeError) as exc:
        raise BaseModelError(f"{card}: not a JSON object ({exc}); fix or remove it.") from exc
    if not isinstance(value, int | float) or not 1.0 <= value <= 30.0:
        raise BaseModelError(f"{card}: 'guidance_scale' must be a number from 1 to 30, "
                             f"not {value!r}; fix or remove it.")
    return float(value)


def _enable_xformers(pipe: object) -> None:
    """xformers only runs with CUDA; PyTorch SDPA is the default everywhere else."""
    try:
        import xformers  # noqa: F401
    except ImportError:
        log.info("xformers not installed; using PyTorch SDPA attention")
        return
    pipe.enable_xformers_memory_efficient_attention()
