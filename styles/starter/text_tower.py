"""One copy of the starter CLIP's text tower, shared by the open_clip model and the pipeline.

The base pipeline's text encoder *is* the starter CLIP's text tower (frozen, converted to
transformers' CLIPTextModel: same maths). Shipping it twice cost 10.4 MB, most of it the
49408-row token table. So the pack keeps it once, in the standard place a diffusers pipeline
loads it from (`pipeline/text_encoder/model.safetensors`), and the open_clip weights file keeps
everything else (vision tower, text projection, logit scale). `open_clip_config.json` records
where the text tower is, the sha256 of its tensors, and the sha256 of the full weights file as
trained, which still names the model (`starter_clip_digest`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from styles.starter.paths import CLIP_CONFIG_FILE, CLIP_WEIGHTS_FILE

TEXT_ENCODER_FILE = "model.safetensors"
# open_clip keys held by the text tower; `text_projection` and `logit_scale` are CLIP's own.
_TOWER_PREFIXES = ("token_embedding.", "positional_embedding", "ln_final.", "transformer.")
_PAIRS = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def is_text_tower_key(key: str) -> bool:
    return key.startswith(_TOWER_PREFIXES)


def _layers(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = {int(k.split(".")[pattern.count(".")]) for k in state if k.startswith(pattern)}
    return max(found) + 1 if found else 0


def _names(layers: int) -> tuple[list[tuple[str, str]], list[tuple[str, list[str]]]]:
    """(open_clip name, CLIPTextModel name) of each tensor kept as is, and of each fused
    q, k, v projection with the three it splits into."""
    same = [("token_embedding.weight", "embeddings.token_embedding.weight"),
            ("positional_embedding", "embeddings.position_embedding.weight"),
            ("ln_final.weight", "final_layer_norm.weight"),
            ("ln_final.bias", "final_layer_norm.bias")]
    fused = []
    for i, kind in ((i, kind) for i in range(layers) for kind in ("weight", "bias")):
        ours, theirs = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        same += [(f"{ours}{a}.{kind}", f"{theirs}{b}.{kind}") for a, b in _PAIRS.items()]
        fused.append((f"{ours}attn.in_proj_{kind}",
                      [f"{theirs}self_attn.{name}_proj.{kind}" for name in ("q", "k", "v")]))
    return same, fused


def open_clip_to_transformers(source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The open_clip text tower's tensors under CLIPTextModel's names (q, k, v split)."""
    same, fused = _names(_layers(source, "transformer.resblocks."))
    state = {theirs: source[ours] for ours, theirs in same}
    for ours, theirs in fused:
        state.update(zip(theirs, source[ours].chunk(3), strict=True))
    return state


def transformers_to_open_clip(source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `open_clip_to_transformers` (q, k, v joined into in_proj)."""
    same, fused = _names(_layers(source, "encoder.layers."))
    state = {ours: source[theirs] for ours, theirs in same}
    state.update({ours: torch.cat([source[name] for name in theirs]) for ours, theirs in fused})
    return state


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tower_digest(tower: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a text tower's tensors (names, dtypes, shapes, bytes): the same for the same
    weights however the file holding them was written."""
    h = hashlib.sha256()
    for key in sorted(tower):
        value = tower[key].contiguous()
        h.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        h.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return h.hexdigest()


def _config(clip_dir: Path) -> dict:
    return json.loads((clip_dir / CLIP_CONFIG_FILE).read_text())


def starter_clip_state(clip_dir: Path) -> dict[str, torch.Tensor]:
    """The full open_clip state of a starter CLIP folder, its text tower joined back in from
    the pipeline's text encoder when the folder shares it."""
    from safetensors.torch import load_file

    clip_dir = Path(clip_dir)
    state = load_file(str(clip_dir / CLIP_WEIGHTS_FILE))
    shared = _config(clip_dir).get("text_tower")
    if not shared:
        return state
    source = (clip_dir / shared["file"]).resolve()
    if not source.is_file():
        raise FileNotFoundError(
            f"{clip_dir / CLIP_WEIGHTS_FILE} keeps its text tower in {source}, which is missing: "
            "restore the pipeline folder, or rebuild the starter pack from scratch "
            "(`loratlas starter build` after deleting both folders)")
    tower = transformers_to_open_clip(load_file(str(source)))
    if tower_digest(tower) != shared["tower_sha256"]:
        raise ValueError(
            f"{source} is not the text encoder {clip_dir / CLIP_WEIGHTS_FILE} was paired with "
            f"(its tensors' sha256 differs from {CLIP_CONFIG_FILE}'s text_tower): restore the "
            "pack's pipeline folder")
    return {**tower, **state}


def starter_clip_digest(clip_dir: Path) -> str:
    """sha256 of the full weights file as trained: the same whether the folder shares its text
    tower or not, so vectors derived from the model keep their names."""
    shared = _config(Path(clip_dir)).get("text_tower")
    return shared["weights_sha256"] if shared else _sha256(Path(clip_dir) / CLIP_WEIGHTS_FILE)


def share_text_tower(clip_dir: Path, text_encoder_dir: Path) -> bool:
    """Drop the text tower from the open_clip weights file when `text_encoder_dir` holds the
    same tensors, bit for bit; record where it is. False if the folder already shares it.

    Crash-safe: the config is written before the weights file is replaced, and a config that
    names a text tower also works with a weights file that still holds one."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    clip_dir, text_encoder_dir = Path(clip_dir), Path(text_encoder_dir)
    config = _config(clip_dir)
    weights = clip_dir / CLIP_WEIGHTS_FILE
    with safe_open(str(weights), "pt") as handle:
        if config.get("text_tower") and not any(map(is_text_tower_key, handle.keys())):
            return False
        metadata = handle.metadata()
    state = load_file(str(weights))
    encoder = text_encoder_dir / TEXT_ENCODER_FILE
    tower = transformers_to_open_clip(load_file(str(encoder)))
    ours = {k: v for k, v in state.items() if is_text_tower_key(k)}
    if tower.keys() != ours.keys() or not all(
            tower[k].dtype == v.dtype and torch.equal(tower[k], v) for k, v in ours.items()):
        raise ValueError(f"{encoder} is not {weights}'s text tower bit for bit; not sharing it")
    config["text_tower"] = {
        "file": os.path.relpath(encoder, clip_dir), "tower_sha256": tower_digest(tower),
        "weights_sha256": config.get("text_tower", {}).get("weights_sha256") or _sha256(weights)}
    tmp = clip_dir / f".{CLIP_CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, clip_dir / CLIP_CONFIG_FILE)
    rest = {k: v.contiguous() for k, v in state.items() if not is_text_tower_key(k)}
    tmp = clip_dir / f".{CLIP_WEIGHTS_FILE}.tmp"
    save_file(rest, str(tmp), metadata=metadata)
    os.chmod(tmp, weights.stat().st_mode & 0o777)
    os.replace(tmp, weights)
    return True
