"""Which base model a LoRA is for, decided by its tensors; metadata is only a hint."""

from __future__ import annotations

from styles.formats import ParsedKeys, RawModule, weight_shape_in
from styles.starter.paths import CROSS_ATTENTION_DIM as STARTER_WIDTH

# Input width of the cross-attention key/value projections, per family.
CROSS_ATTENTION_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl", STARTER_WIDTH: "starter"}
# Hidden width of the (first) text encoder, per family.
TEXT_ENCODER_WIDTH = {768: "sd1", 1024: "sd2", 1280: "sdxl", STARTER_WIDTH: "starter"}
FAMILY_LABELS = {
    "sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL",
    "flux": "Flux.1", "starter": "the Loratlas starter model", "not-image": "not an image model",
    "unknown": "an unknown base model",
}


def register_cross_attention_width(width: int, family: str) -> None:
    """Teach detection another family by its cross-attention width (the starter model's)."""
    CROSS_ATTENTION_WIDTH.setdefault(width, family)


def _is_cross_kv(module: RawModule) -> bool:
    name = module.name.replace("_", ".")
    return name.endswith(("attn2.to.k", "attn2.to.v"))


def detect_family(parsed: ParsedKeys) -> tuple[str, str]:
    """(family, evidence) from the keys and tensor shapes alone."""
    modules = list(parsed.modules.values())
    components = {m.component for m in modules}
    flux_names = ("double_blocks", "single_blocks", "single_transformer_blocks")
    if "transformer" in components or any(m.name.startswith(flux_names) for m in modules):
        return "flux", "keys of a Flux transformer (transformer_blocks / single_blocks)"
    if "text_encoder_2" in components:
        return "sdxl", "keys for a second text encoder (lora_te2_ / text_encoder_2)"
    unet = [m for m in modules if m.component == "unet"]
    for module in unet:
        if _is_cross_kv(module) and (shape := weight_shape_in(module)):
            family = CROSS_ATTENTION_WIDTH.get(shape[1])
            if family:
                return family, f"cross-attention key/value input width {shape[1]}"
            return "unknown", f"cross-attention input width {shape[1]} matches no known family"
    widths = {shape[1] for m in unet if (shape := weight_shape_in(m))}
    for width, family in CROSS_ATTENTION_WIDTH.items():
        if width in widths and unet:
            return family, f"a UNet projection with input width {width} (cross-attention)"
    text = [m for m in modules if m.component == "text_encoder"]
    for module in text:
        if shape := weight_shape_in(module):
            family = TEXT_ENCODER_WIDTH.get(min(shape))
            if family:
                return family, f"text-encoder width {min(shape)}"
    if unet:
        return "unknown", "UNet keys without a cross-attention projection to tell the family"
    if modules:
        return "not-image", "no key belongs to a UNet, text encoder or diffusion transformer"
    return "unknown", "no LoRA keys"
