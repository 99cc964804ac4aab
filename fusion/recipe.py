"""A recipe: everything needed to regenerate an image exactly, as JSON and in the PNG."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

RECIPE_VERSION = 1
MODES = ("merge", "switch", "composite", "cmlora", "gated")
CONTENT_GUIDED = ("merge", "switch", "gated")  # the modes run by the pipeline's own loop
PNG_KEY = "loratlas-recipe"


@dataclass
class RecipeLora:
    """One LoRA as used: how to find it again (ref) and how to check it is the same (sha256)."""

    ref: str
    sha256: str
    weight: float = 1.0
    block_weights: dict | None = None
    step_weights: list[float] | None = None
    alpha: float | None = None


@dataclass
class Recipe:
    """The inputs of one generation; `seed` is the seed of the first image, image i uses seed+i."""

    prompt: str
    base_model: str
    base_family: str
    seed: int = 0
    steps: int = 20
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    num_images: int = 1
    negative_prompt: str = ""
    scheduler: str = ""
    apply: str = "adapters"  # "adapters" (PEFT layers) | "fused" (deltas in the weights)
    mode: str = "merge"  # merge | switch | composite | cmlora | gated (how LoRAs combine)
    switch_period: int = 5  # LoRA Switch: steps each LoRA leads before the next takes over
    cmlora_cache: str = "residual"  # CMLoRA: "residual" (cached per-LoRA residuals) | "none"
    gate_tolerance: float = 0.05  # gated + fused: rewrite a layer when a gate moves more
    gate_network: str = ""  # gated: id of the learned gate network used ("" = none)
    # the base model's own guidance (LoRAs bypassed) added over the first share of the steps
    # (fusion/content_guidance.py); 0: off
    content_guidance: float = 0.0
    content_guidance_steps: float = 0.4
    loras: list[RecipeLora] = field(default_factory=list)
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if self.steps < 1 or self.num_images < 1:
            raise ValueError("steps and num_images must be at least 1")
        if self.width % 8 or self.height % 8:
            raise ValueError(f"size {self.width}x{self.height}: both sides must be multiples of 8")
        if self.apply not in ("adapters", "fused"):
            raise ValueError(f"apply '{self.apply}' must be 'adapters' or 'fused'")
        if self.mode not in MODES:
            raise ValueError(f"mode '{self.mode}' must be one of {', '.join(MODES)}")
        if self.mode not in ("merge", "gated") and self.apply == "fused":
            raise ValueError(f"mode '{self.mode}' changes LoRAs during denoising: use "
                             "apply='adapters'")
        if self.switch_period < 1:
            raise ValueError("switch_period must be at least 1")
        if self.cmlora_cache not in ("residual", "none"):
            raise ValueError(f"cmlora_cache '{self.cmlora_cache}' must be 'residual' or 'none'")
        if not 0 <= self.gate_tolerance < 1:
            raise ValueError("gate_tolerance must be in [0, 1)")
        if not 0 <= self.content_guidance <= 30:
            raise ValueError("content_guidance must be from 0 (off) to 30")
        if not 0 < self.content_guidance_steps <= 1:
            raise ValueError("content_guidance_steps is a share of the steps: in (0, 1]")
        if self.content_guidance and self.mode not in CONTENT_GUIDED:
            raise ValueError(f"content_guidance works with merge, switch and gated, not with "
                             f"{self.mode} (its own denoising loop)")
        if self.content_guidance and self.guidance_scale <= 1:
            raise ValueError("content_guidance adds to classifier-free guidance: set "
                             "guidance_scale (the CLI's --guidance) above 1, or "
                             "content_guidance to 0")
        self.loras = [lora if isinstance(lora, RecipeLora) else RecipeLora(**lora)
                      for lora in self.loras]

    def for_image(self, index: int) -> Recipe:
        """The recipe of image `index` alone (its own seed, one image)."""
        data = asdict(self)
        data.update(seed=self.seed + index, num_images=1)
        return Recipe(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        data = json.loads(text)
        if data.get("version", 1) > RECIPE_VERSION:
            raise ValueError(f"recipe version {data['version']} is newer than this Loratlas")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """From a .json recipe or a PNG written by Loratlas."""
        path = Path(path)
        if path.suffix.lower() == ".png":
            with Image.open(path) as image:
                text = image.text.get(PNG_KEY)
            if text is None:
                raise ValueError(f"{path.name} holds no Loratlas recipe")
            return cls.from_json(text)
        return cls.from_json(path.read_text())


def save_png(image: Image.Image, recipe: Recipe, path: str | Path) -> Path:
    """Write the image with its recipe in a PNG text chunk."""
    info = PngInfo()
    info.add_text(PNG_KEY, recipe.to_json())
    path = Path(path)
    image.save(path, pnginfo=info)
    return path
