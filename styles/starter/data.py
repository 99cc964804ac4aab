"""Batches of world images and captions for training (deterministic by seed)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from styles.starter.looks import apply_styles, styled_caption
from styles.starter.paths import IMAGE_SIZE
from styles.starter.world import Scene, caption, render_scene, sample_scene, swap_shape


def world_batch(rng: np.random.Generator, n: int, slugs: Sequence[str] = (),
                n_objects: int | None = None, plain_captions: float = 0.0
                ) -> tuple[np.ndarray, list[str]]:
    """n images (n, 64, 64, 3) in [0, 1] with captions; styled with `slugs` if given, and
    then captioned without the style words with probability `plain_captions`."""
    images, captions, _, _ = _batch(rng, n, slugs, n_objects, plain_captions, None)
    return images, captions


def world_batch_with_swaps(rng: np.random.Generator, swaps: np.random.Generator, n: int,
                           slugs: Sequence[str] = (), plain_captions: float = 0.0
                           ) -> tuple[np.ndarray, list[str], list[str]]:
    """`world_batch`, and each caption again in the same words but naming another shape for
    one object (`swap_shape`, drawn from `swaps`, so `rng` draws exactly what `world_batch`
    draws): for training terms that ask the model to use the shape word."""
    images, captions, swapped, _ = _batch(rng, n, slugs, None, plain_captions, swaps)
    return images, captions, swapped


def world_batch_with_change(rng: np.random.Generator, n: int, slugs: Sequence[str],
                            plain_captions: float = 0.0
                            ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """`world_batch` (the same draws), and where the styles changed each image: (n, 64, 64),
    the mean absolute difference over channels between the styled and the unstyled render
    of the same scene (a concept's motif stands out; a colour style changes everything)."""
    images, captions, _, changes = _batch(rng, n, slugs, None, plain_captions, None)
    return images, captions, changes


def _batch(rng: np.random.Generator, n: int, slugs: Sequence[str], n_objects: int | None,
           plain_captions: float, swaps: np.random.Generator | None
           ) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    changes = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    captions, swapped = [], []

    def styled(scene: Scene, wording: np.random.Generator) -> str:
        return styled_caption(scene, list(slugs), wording)

    for i in range(n):
        scene = sample_scene(rng, n_objects)
        image = render_scene(scene, IMAGE_SIZE)
        describe = caption
        if slugs:
            plain_image = image
            image = apply_styles(image, list(slugs), seed=int(rng.integers(1 << 30)),
                                 scene=scene)
            changes[i] = np.abs(image - plain_image).mean(-1)
            plain = plain_captions and rng.random() < plain_captions
            describe = caption if plain else styled
        if swaps is not None:  # the same wording: caption the lie with a copy of rng
            swapped.append(describe(swap_shape(scene, swaps), copy.deepcopy(rng)))
        captions.append(describe(scene, rng))
        images[i] = image
    return images, captions, swapped, changes


def style_word_batch(rng: np.random.Generator, n: int, slugs: Sequence[str], share: float
                     ) -> tuple[np.ndarray, list[str]]:
    """n unstyled images whose captions, with probability `share`, also describe one to three
    styles drawn from `slugs` (as `styled_caption` words them): the image does not change, so a
    base trained on them learns that style words say nothing about the content."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    captions = []
    for i in range(n):
        scene = sample_scene(rng)
        images[i] = render_scene(scene, IMAGE_SIZE)
        if rng.random() < share:
            chosen = rng.choice(len(slugs), size=int(rng.integers(1, 4)), replace=False)
            captions.append(styled_caption(scene, [slugs[int(j)] for j in chosen], rng))
        else:
            captions.append(caption(scene, rng))
    return images, captions


def to_tensor_layout(images: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) in [0, 1] → (n, 3, h, w) in [-1, 1], as diffusers' VAE expects."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2) * 2.0 - 1.0, dtype=np.float32)
