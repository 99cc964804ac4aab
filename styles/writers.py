"""Write LoRA files in the layouts real tools write (kohya sd-scripts, diffusers/PEFT)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from styles.lora import LoraModule

KOHYA_COMPONENT_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_",
                          "text_encoder_2": "lora_te2_"}


def save_kohya(modules: list[LoraModule], path: str | Path, metadata: dict[str, str] | None = None,
               alpha: float | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """kohya sd-scripts layout: `lora_unet_<path_with_underscores>.lora_down.weight`, `.alpha`.

    Text-encoder paths use the `text_model.` level kohya writes.
    """
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        path_part = module.path
        if module.component.startswith("text_encoder") and not path_part.startswith("text_model."):
            path_part = "text_model." + path_part
        name = KOHYA_COMPONENT_PREFIX[module.component] + path_part.replace(".", "_")
        module_alpha = alpha if alpha is not None else module.rank * module.scale
        tensors[f"{name}.lora_down.weight"] = module.down.to(dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = module.up.to(dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(module_alpha), dtype=dtype)
        if alpha is not None and module.rank * module.scale != alpha:
            # keep the delta exact: put the difference of scales into the up factor
            factor = module.scale / (alpha / module.rank)
            tensors[f"{name}.lora_up.weight"] = (module.up * factor).to(dtype).contiguous()
    return _save(tensors, path, metadata)


def save_diffusers(modules: list[LoraModule], path: str | Path,
                   metadata: dict[str, str] | None = None,
                   dtype: torch.dtype = torch.float32) -> Path:
    """diffusers' current layout: `unet.<path>.lora_A.weight` / `lora_B`, scale folded in."""
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        path_part = module.path
        if module.component.startswith("text_encoder") and not path_part.startswith("text_model."):
            path_part = "text_model." + path_part
        key = f"{module.component}.{path_part}"
        tensors[f"{key}.lora_A.weight"] = module.down.to(dtype).contiguous()
        tensors[f"{key}.lora_B.weight"] = (module.up * module.scale).to(dtype).contiguous()
    return _save(tensors, path, metadata)


def _save(tensors: dict[str, torch.Tensor], path: str | Path,
          metadata: dict[str, str] | None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    tmp.replace(path)
    return path
