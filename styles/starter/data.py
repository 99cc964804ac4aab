"""Batches of world images and captions for training (deterministic by seed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from styles.starter.looks import apply_styles, styled_caption
from styles.starter.paths import IMAGE_SIZE
from styles.starter.world import caption, render_scene, sample_scene


def world_batch(rng: np.random.Generator, n: int, slugs: Sequence[str] = (),
                n_objects: int | None = None, plain_captions: float = 0.0
                ) -> tuple[np.ndarray, list[str]]:
    """n images (n, 64, 64, 3) in [0, 1] with captions; styled with `slugs` if given, and
    then captioned without the style words with probability `plain_captions`."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    captions = []
    for i in range(n):
        scene = sample_scene(rng, n_objects)
        image = render_scene(scene, IMAGE_SIZE)
        if slugs:
            image = apply_styles(image, list(slugs), seed=int(rng.integers(1 << 30)),
                                 scene=scene)
            plain = plain_captions and rng.random() < plain_captions
            captions.append(caption(scene, rng) if plain else
                            styled_caption(scene, list(slugs), rng))
        else:
            captions.append(caption(scene, rng))
        images[i] = image
    return images, captions


def to_tensor_layout(images: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) in [0, 1] → (n, 3, h, w) in [-1, 1], as diffusers' VAE expects."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2) * 2.0 - 1.0, dtype=np.float32)
