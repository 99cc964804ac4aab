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


def fitting_families(unet: list[RawModule]) -> list[str]:
    """The families whose reference UNet has a module of each name and delta shape given.

    Only used when a LoRA leaves the cross-attention key/value out (some style LoRAs do): no
    other width names the family (the starter's feed-forward is 768 wide, like SD 1.x's text).
    SD 1.x and 2.x share names and most shapes, so an attention-only LoRA may fit both."""
    from styles.architectures import REFERENCE_CONFIGS, reference_table

    if any(m.style == "index" for m in unet):
        return []  # cloneofsimo's numbered modules carry no names to check
    fits = []
    for family in dict.fromkeys(("starter", *REFERENCE_CONFIGS)):
        table = reference_table(family)
        for module in unet:
            target, shape = table.resolve("unet", module.name), weight_shape_in(module)
            spec = table.specs.get(target) if target else None
            if spec is None or shape != (spec.out_features, spec.in_features
                                         * spec.kernel_size[0] * spec.kernel_size[1]):
                break
        else:
            fits.append(family)
    return fits


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
    fits = fitting_families(unet) if unet else []  # no cross-attention key/value
    if len(fits) == 1:
        return fits[0], (f"every UNet module fits {FAMILY_LABELS[fits[0]]}'s UNet by name and "
                         "shape (no cross-attention key/value to read the text width from)")
    text = [m for m in modules if m.component == "text_encoder"]
    for module in text:
        if shape := weight_shape_in(module):
            family = TEXT_ENCODER_WIDTH.get(min(shape))
            if family:
                return family, f"text-encoder width {min(shape)}"
    if len(fits) > 1:
        return "unknown", ("no cross-attention key/value, and the UNet modules fit "
                           + " and ".join(FAMILY_LABELS[f] for f in fits) + " alike")
    if unet:
        return "unknown", "UNet keys without a cross-attention projection to tell the family"
    if modules:
        return "not-image", "no key belongs to a UNet, text encoder or diffusion transformer"
    return "unknown", "no LoRA keys"
