"""Module tables: which Linear and Conv2d modules a base model has, in model order.

A table is built from a loaded pipeline's components, or from a reference architecture built on
the meta device (no weights, no download) so a file can be checked before any base is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn


@dataclass(frozen=True)
class ModuleSpec:
    """One adaptable module of a base model."""

    target: str  # "unet.down_blocks.0....to_k"
    kind: str  # "linear" | "conv"
    in_features: int
    out_features: int
    kernel_size: tuple[int, int]
    ancestor_classes: frozenset[str]  # class names (whole MRO) of every enclosing module


class ModuleTable:
    """Adaptable modules of a base model, by target path and in model order."""

    def __init__(self, family: str, specs: list[ModuleSpec]) -> None:
        self.family = family
        self.specs = {spec.target: spec for spec in specs}
        self.order = [spec.target for spec in specs]
        self._paths: dict[tuple[str, str], str] = {}
        for spec in specs:
            component, path = spec.target.split(".", 1)
            aliases = [path]
            if component.startswith("text_encoder"):
                # transformers 5 dropped CLIPTextModel's `text_model.` level; files still have it
                aliases.append(path[len("text_model."):] if path.startswith("text_model.")
                               else "text_model." + path)
            for alias in aliases:
                self._paths[(component, alias)] = spec.target
                self._paths[(component, alias.replace(".", "_"))] = spec.target

    def __contains__(self, target: str) -> bool:
        return target in self.specs

    def __len__(self) -> int:
        return len(self.specs)

    def resolve(self, component: str, name: str) -> str | None:
        """Resolve a module path, or a kohya name (the path with '.' written as '_')."""
        return self._paths.get((component, name))

    def in_order(self, component: str, ancestor_classes: set[str]) -> list[str]:
        """Linear modules under any ancestor of the given classes (cloneofsimo's index order)."""
        return [
            target for target in self.order
            if target.startswith(component + ".") and self.specs[target].kind == "linear"
            and self.specs[target].ancestor_classes & ancestor_classes
        ]

    @classmethod
    def from_components(cls, family: str, components: dict[str, nn.Module]) -> ModuleTable:
        specs: list[ModuleSpec] = []
        for component, model in components.items():
            if model is not None:
                _walk(component, model, "", frozenset(), specs)
        return cls(family, specs)


def _class_names(module: nn.Module) -> frozenset[str]:
    return frozenset(k.__name__ for k in type(module).__mro__ if k not in (nn.Module, object))


def _walk(component: str, module: nn.Module, prefix: str, ancestors: frozenset[str],
          out: list[ModuleSpec]) -> None:
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        base = getattr(child, "base_layer", None)  # a PEFT-wrapped layer: read the base layer
        layer = base if isinstance(base, nn.Linear | nn.Conv2d) else child
        if isinstance(layer, nn.Linear):
            out.append(ModuleSpec(f"{component}.{path}", "linear", layer.in_features,
                                  layer.out_features, (1, 1), ancestors))
        elif isinstance(layer, nn.Conv2d):
            out.append(ModuleSpec(f"{component}.{path}", "conv", layer.in_channels,
                                  layer.out_channels, tuple(layer.kernel_size), ancestors))
        if layer is child:
            _walk(component, child, path, ancestors | _class_names(child), out)


# Reference architectures, from the public model configs of each family (no weights).
_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, projection_dim=768, max_position_embeddings=77)
_OPENCLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                   num_attention_heads=16, projection_dim=1024, max_position_embeddings=77,
                   hidden_act="gelu")
_OPENCLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                      num_attention_heads=20, projection_dim=1280, max_position_embeddings=77,
                      hidden_act="gelu")
_SD_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
REFERENCE_CONFIGS: dict[str, dict] = {
    "sd1": {"unet": _SD_UNET, "text_encoder": _CLIP_L},
    "sd2": {"unet": dict(_SD_UNET, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                         use_linear_projection=True),
            "text_encoder": _OPENCLIP_H},
    "sdxl": {
        "unet": dict(sample_size=128, cross_attention_dim=2048,
                     block_out_channels=[320, 640, 1280],
                     down_block_types=["DownBlock2D", "CrossAttnDownBlock2D",
                                       "CrossAttnDownBlock2D"],
                     up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                     transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20],
                     use_linear_projection=True, addition_embed_type="text_time",
                     addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
        "text_encoder": _CLIP_L,
        "text_encoder_2": _OPENCLIP_BIGG,
    },
}


@lru_cache(maxsize=4)
def reference_table(family: str) -> ModuleTable | None:
    """The module table of a family's reference architecture, built on the meta device."""
    if family == "starter":
        from styles.starter.base_model import TEXT_CONFIG, UNET_CONFIG

        REFERENCE_CONFIGS["starter"] = {"unet": UNET_CONFIG, "text_encoder": TEXT_CONFIG}
    if family not in REFERENCE_CONFIGS:
        return None
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    components: dict[str, nn.Module] = {}
    with torch.device("meta"):
        for component, config in REFERENCE_CONFIGS[family].items():
            if component == "unet":
                components[component] = UNet2DConditionModel(**config)
            else:
                model_cls = CLIPTextModelWithProjection if component == "text_encoder_2" \
                    else CLIPTextModel
                components[component] = model_cls(CLIPTextConfig(**config))
    return ModuleTable.from_components(family, components)
