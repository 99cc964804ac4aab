"""Where the starter pack's artifacts live (shipped in the package, never written at run time
except by `loratlas starter build`)."""

from __future__ import annotations

from pathlib import Path

STARTER_DIR = Path(__file__).resolve().parents[1] / "data" / "starter"
PIPELINE_DIR = STARTER_DIR / "pipeline"
LORA_DIR = STARTER_DIR / "loras"
CLIP_DIR = STARTER_DIR / "open_clip"
CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"  # in CLIP_DIR (the starter open_clip model)
CLIP_CONFIG_FILE = "open_clip_config.json"
JUDGES_DIR = STARTER_DIR / "judges"
MODEL_CARD = "loratlas_starter.json"  # in a pipeline folder: how it was built, how to sample
IMAGE_SIZE = 64
CROSS_ATTENTION_DIM = 96  # the starter text width (its open_clip text tower); names the family


def starter_available() -> bool:
    return (PIPELINE_DIR / "model_index.json").is_file()


def _manifest_styles() -> list[dict]:
    import json

    manifest = STARTER_DIR / "manifest.json"
    if not manifest.is_file():
        return []
    return [s for s in json.loads(manifest.read_text())["styles"]
            if (LORA_DIR / s["file"]).is_file()]


def starter_loras() -> dict[str, Path]:
    """slug → file of every shipped starter style LoRA (from the manifest)."""
    return {s["slug"]: LORA_DIR / s["file"] for s in _manifest_styles()}


def starter_recommendations() -> dict[str, tuple[Path, dict]]:
    """slug → (file, the generation settings the style recommends) for the starter styles
    that recommend any (the manifest's `recommended`; build.GENERATION_DEFAULTS)."""
    return {s["slug"]: (LORA_DIR / s["file"], s["recommended"]) for s in _manifest_styles()
            if s.get("recommended")}
