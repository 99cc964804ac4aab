"""Shared set-up for benchmarks: the starter service, prompts from held-out seeds."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = ROOT / "benchmarks" / "results"


def machine_line() -> str:
    import torch

    return (f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, CPU (no GPU), fp32.")


def images_as_array(images) -> np.ndarray:  # noqa: F821
    import numpy as np

    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])


def ground_truth(scene, slugs, seed: int, size: int = 64) -> np.ndarray:  # noqa: F821
    """The exact image the world draws for a scene in these styles, (size, size, 3) uint8: what
    a perfect model would render for its prompt."""
    import numpy as np

    from styles.starter.looks import apply_styles
    from styles.starter.world import render_scene

    image = apply_styles(render_scene(scene, size), list(slugs), seed, scene)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
