"""Key layouts of every common LoRA tool, parsed into raw modules, then into exact factors.

Layouts: kohya sd-scripts and LyCORIS (`lora_unet_…`, `lora_te_…`, `.alpha`), diffusers and PEFT
(`unet.`, `text_encoder.`, `base_model.model.`, no prefix; `lora_A/B`, `.lora.down/up`), old
diffusers attention processors (`…processor.to_k_lora.down.weight`) and cloneofsimo safeloras
(`unet:17:up`, module classes in the metadata).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

KOHYA_PREFIXES = {
    "lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2",
    "lora_te_": "text_encoder", "lora_transformer_": "transformer",
}
PATH_PREFIXES = {
    "unet.": "unet", "text_encoder_2.": "text_encoder_2", "text_encoder.": "text_encoder",
    "transformer.": "transformer", "model.diffusion_model.": "unet",
}
UNET_ROOTS = ("down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out", "time_embedding",
              "add_embedding", "input_blocks", "output_blocks", "middle_block", "conv_norm_out")
TRANSFORMER_ROOTS = ("transformer_blocks", "single_transformer_blocks", "double_blocks",
                     "single_blocks", "x_embedder", "context_embedder", "proj_out", "norm_out",
                     "time_text_embed")
PART_SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_mid.weight", "mid"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".alpha", "alpha"), (".dora_scale", "dora_scale"), (".lora_magnitude_vector", "dora_scale"),
    (".diff", "diff"), (".diff_b", "diff_b"), (".lora_B.bias", "up_bias"),
    *((f".{p}", p) for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1",
                             "hada_t2", "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2",
                             "lokr_w2_a", "lokr_w2_b", "lokr_t2")),
)
_PEFT_NAMED = re.compile(r"^(?P<name>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")
_PROCESSOR = re.compile(
    r"^(?P<name>.+)\.processor\.(?P<proj>[a-z_]+?)_lora\.(?P<part>down|up)\.weight$"
)
_CLONEOFSIMO = re.compile(r"^(?P<component>[a-z_0-9]+):(?P<index>\d+):(?P<part>up|down)$")


@dataclass
class RawModule:
    """The tensors a file holds for one module, before the name is resolved."""

    component: str  # unet | text_encoder | text_encoder_2 | transformer | other
    name: str  # a dotted path, a kohya flat name, or a cloneofsimo index
    style: str  # "path" | "flat" | "index"
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def algo(self) -> str:
        if any(p.startswith("hada_") for p in self.parts):
            return "loha"
        if any(p.startswith("lokr_") for p in self.parts):
            return "lokr"
        if "diff" in self.parts:
            return "full"
        return "lora"


@dataclass
class ParsedKeys:
    """All raw modules of a file, the layout they were written in, and keys left unparsed."""

    format: str
    modules: dict[tuple[str, str], RawModule]
    unparsed: list[str]
    metadata: dict[str, str] = field(default_factory=dict)


def _component_of_path(path: str) -> tuple[str, str]:
    for prefix, component in PATH_PREFIXES.items():
        if path.startswith(prefix):
            return component, path[len(prefix):]
    if path.startswith("base_model.model."):
        path = path[len("base_model.model."):]
    root = path.split(".", 1)[0]
    if path.startswith("text_model.") or (root in ("encoder", "embeddings") and "layers" in path):
        return "text_encoder", path
    if root in UNET_ROOTS:
        return "unet", path
    if root in TRANSFORMER_ROOTS:
        return "transformer", path
    return "other", path


def _split_part(key: str) -> tuple[str, str] | None:
    for suffix, part in PART_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    named = _PEFT_NAMED.match(key)
    if named:
        return named["name"], "down" if named["ab"] == "A" else "up"
    return None


def parse_keys(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> ParsedKeys:
    """Group a state dict's keys into raw modules and name the layout."""
    modules: dict[tuple[str, str], RawModule] = {}
    unparsed: list[str] = []
    styles: set[str] = set()

    def add(component: str, name: str, style: str, part: str, tensor: torch.Tensor) -> None:
        module = modules.setdefault((component, name), RawModule(component, name, style))
        module.parts[part] = tensor

    for key, tensor in tensors.items():
        if match := _CLONEOFSIMO.match(key):
            add(match["component"], match["index"], "index", match["part"], tensor)
            styles.add("cloneofsimo")
            continue
        if match := _PROCESSOR.match(key):
            proj = match["proj"]
            proj = "to_out.0" if proj == "to_out" else proj
            component, path = _component_of_path(match["name"])
            add(component, f"{path}.{proj}", "path", match["part"], tensor)
            styles.add("diffusers-attn-processor")
            continue
        kohya = next((p for p in KOHYA_PREFIXES if key.startswith(p)), None)
        split = _split_part(key)
        if split is None:
            unparsed.append(key)
            continue
        name, part = split
        if kohya:
            add(KOHYA_PREFIXES[kohya], name[len(kohya):], "flat", part, tensor)
            algo_tag = "lycoris" if part.startswith(("hada_", "lokr_")) else "kohya"
            styles.add(algo_tag)
        else:
            component, path = _component_of_path(name)
            add(component, path, "path", part, tensor)
            if key.startswith("base_model.model."):
                styles.add("peft")
            elif ".lora_A." in key or ".lora_B." in key:
                styles.add("diffusers-peft")
            else:
                styles.add("diffusers")
    return ParsedKeys(_format_name(styles, modules), modules, unparsed, dict(metadata))


def _format_name(styles: set[str], modules: dict[tuple[str, str], RawModule]) -> str:
    if "lycoris" in styles:
        algos = sorted({m.algo for m in modules.values()} - {"lora"})
        return "lycoris-" + "+".join(algos or ["locon"])
    if "kohya" in styles:
        return "kohya"
    for name in ("cloneofsimo", "diffusers-attn-processor", "peft", "diffusers-peft",
                 "diffusers"):
        if name in styles:
            return name
    return "unknown"


# ---- exact factors -------------------------------------------------------------------------

def _row_kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Face-splitting product: row i is kron(a[i], b[i])."""
    return (a[:, :, None] * b[:, None, :]).reshape(a.shape[0], -1)


def _col_kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Khatri-Rao product: column j is kron(a[:, j], b[:, j])."""
    return (a[:, None, :] * b[None, :, :]).reshape(-1, a.shape[1])


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.float().reshape(t.shape[0], -1)


def exact_factors(raw: RawModule) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """(up 2-D, down 2-D, rank alpha divides by) with delta = alpha / rank * up @ down, exactly.

    LoHa: (A1 B1) * (A2 B2) = (A1 ⊙row A2)(B1 ⊙col B2). LoKr: kron(X1 Y1, X2 Y2) =
    kron(X1, X2) kron(Y1, Y2). The flattened columns follow the same order as the tool's own
    reshape of the delta, so reshaping `up @ down` to the weight shape reproduces it.
    """
    parts = raw.parts
    algo = raw.algo
    if algo == "lora":
        if "mid" in parts:
            raise ValueError("LoCon Tucker modules (lora_mid) are not supported")
        down, up = _flat(parts["down"]), _flat(parts["up"])
        return up, down, down.shape[0]
    if algo == "loha":
        if "hada_t1" in parts:
            raise ValueError("LoHa Tucker modules (hada_t1) are not supported")
        a1, b1 = _flat(parts["hada_w1_a"]), _flat(parts["hada_w1_b"])
        a2, b2 = _flat(parts["hada_w2_a"]), _flat(parts["hada_w2_b"])
        return _row_kron(a1, a2), _col_kron(b1, b2), b1.shape[0]
    if algo == "lokr":
        if "lokr_t2" in parts:
            raise ValueError("LoKr Tucker modules (lokr_t2) are not supported")
        rank = None
        if "lokr_w1" in parts:
            x1 = _flat(parts["lokr_w1"])
            y1 = torch.eye(x1.shape[1])
        else:
            x1, y1 = _flat(parts["lokr_w1_a"]), _flat(parts["lokr_w1_b"])
            rank = y1.shape[0]
        if "lokr_w2" in parts:
            x2 = _flat(parts["lokr_w2"])
            y2 = torch.eye(x2.shape[1])
        else:
            x2, y2 = _flat(parts["lokr_w2_a"]), _flat(parts["lokr_w2_b"])
            rank = rank or y2.shape[0]
        return torch.kron(x1, x2), torch.kron(y1, y2), rank
    raise ValueError("full-weight 'diff' modules are not supported")


def weight_shape_in(raw: RawModule) -> tuple[int, int] | None:
    """(out, in*k*k) of the delta, read from the factors' shapes without computing it."""
    p = {k: v.shape for k, v in raw.parts.items()}
    flat = lambda s: int(torch.tensor(s[1:]).prod().item()) if len(s) > 1 else 1  # noqa: E731
    if raw.algo == "lora" and "down" in p and "up" in p:
        return p["up"][0], flat(p["down"])
    if raw.algo == "loha" and "hada_w1_a" in p:
        return p["hada_w1_a"][0], flat(p["hada_w1_b"])
    if raw.algo == "lokr":
        o1, i1 = (p["lokr_w1"][0], flat(p["lokr_w1"])) if "lokr_w1" in p else \
            (p["lokr_w1_a"][0], flat(p["lokr_w1_b"]))
        o2, i2 = (p["lokr_w2"][0], flat(p["lokr_w2"])) if "lokr_w2" in p else \
            (p.get("lokr_w2_a", (0,))[0], flat(p.get("lokr_w2_b", (0, 0))))
        return o1 * o2, i1 * i2
    return None
