"""The retrieval evaluation prompt set (written for the benchmark, never used in training).

Paraphrases avoid each style's slug and name; the content half comes from the world's caption
grammar with held-out seeds. Writes benchmarks/data/retrieval_prompts.jsonl:
{"prompt", "styles": [...], "kind": "single"|"double"|"triple"|"none"}.

    .venv/bin/python benchmarks/retrieval_prompts.py
"""

from __future__ import annotations

import json

import numpy as np
from common import ROOT

from styles.starter.looks import STYLES, clashing_pairs
from styles.starter.world import caption, sample_scene

PARAPHRASES = {
    "sepia": ["faded brown like a grandparent's photo album", "warm brownish antique tint",
              "old-timey brown photograph"],
    "neon-night": ["glowing tubes of light on a black night", "electric glow in the dark city",
                   "bright glowing outline on darkness"],
    "pastel": ["soft washed-out candy colors", "gentle pale baby colors",
               "muted light powdery tones"],
    "blueprint": ["white technical drawing on blue paper", "architect's plan with a blue grid",
                  "engineering drawing in white lines on blue"],
    "sunset-sky": ["orange to purple evening sky behind it", "dusk gradient background",
                   "warm glowing horizon at the end of the day"],
    "noir": ["hard black and white with deep shadows", "moody detective film look",
             "high contrast grayscale with a dark vignette"],
    "vaporwave": ["pink and cyan retro grid aesthetic", "80s synth grid horizon in magenta",
                  "retro-futuristic pink and teal"],
    "negative": ["colors inverted like developed film", "every color flipped to its opposite",
                 "inverted tones"],
    "pop-art": ["bold flat comic colors with thick black outlines", "loud saturated poster look",
                "warhol-like bright flat colors"],
    "pixel-art": ["chunky blocks like an old video game", "8-bit retro game graphics",
                  "big visible square blocks"],
    "halftone": ["printed with tiny dots like an old newspaper", "comic-book dot screen print",
                 "made of dots of varying size"],
    "pencil-sketch": ["graphite drawing on white paper", "rough gray hand-drawn strokes",
                      "drawn with a lead pencil"],
    "stripes": ["covered in diagonal bands", "slanted lines across the whole picture",
                "barber-pole bands"],
    "checkerboard": ["on a chess board pattern", "alternating squares like a checkered floor",
                     "two-tone square tiles behind it"],
    "film-grain": ["grainy like old analog film", "heavy noisy speckled texture",
                   "sandy photographic noise all over"],
    "mosaic": ["made of little tiles with grout", "tiled like a roman floor",
               "broken ceramic tile pattern"],
    "watercolor": ["soft paint bleeding on wet paper", "blurry painted washes",
                   "loose wet brush painting"],
    "crosshatch": ["shaded with crossing ink lines", "hatched pen-and-ink shading",
                   "criss-cross line shading"],
    "line-art": ["clean black outlines on white, no fill", "simple ink contour drawing",
                 "just the outline in black"],
    "stained-glass": ["colored glass panes with dark lead lines", "cathedral window look",
                      "bright glass pieces in a church window"],
    "embossed": ["raised gray relief like stamped metal", "carved in gray stone relief",
                 "pressed into metal"],
    "glitch": ["corrupted digital signal with shifted rows", "broken screen with color offsets",
               "datamoshed scanline errors"],
    "polka-dots": ["background of round spots", "dotted fabric pattern behind it",
                   "regular round dots all around"],
    "chalkboard": ["drawn in chalk on a green school board", "white chalk lines on dark green",
                   "classroom board sketch"],
    "crescent-moon": ["with a thin sliver of the moon in the corner", "a little curved moon nearby",
                      "night moon crescent beside it"],
    "lightning-bolt": ["with a jagged yellow thunderbolt", "a zigzag electric flash beside it",
                       "storm bolt next to it"],
    "smiley-face": ["with a happy face drawn on it", "smiling eyes and mouth on it",
                    "wearing a cheerful grin"],
    "arrow": ["with a pointer aimed at it", "a direction marker pointing to it",
              "a signpost pointing at it"],
}
TEMPLATES = ["{content}, {style}", "{style}: {content}", "{content} {style}",
             "{content}; {style}"]
SEED = 50_000


def build(path=ROOT / "benchmarks" / "data" / "retrieval_prompts.jsonl") -> list[dict]:
    assert set(PARAPHRASES) == set(STYLES)
    rng = np.random.default_rng(SEED)
    slugs = sorted(STYLES)
    rows: list[dict] = []

    def content() -> str:
        return caption(sample_scene(rng, n_objects=1), rng)

    for slug in slugs:  # 28 × 6 single-style prompts
        for i in range(6):
            phrase = PARAPHRASES[slug][i % 3]
            template = TEMPLATES[(i + len(slug)) % len(TEMPLATES)]
            rows.append({"prompt": template.format(content=content(), style=phrase),
                         "styles": [slug], "kind": "single"})
    for kind, count, size in (("double", 80, 2), ("triple", 30, 3)):
        made = 0
        while made < count:
            chosen = list(rng.choice(slugs, size, replace=False))
            if clashing_pairs(chosen):
                continue
            phrases = [PARAPHRASES[s][int(rng.integers(3))] for s in chosen]
            rows.append({"prompt": f"{content()}, " + ", ".join(phrases), "styles": chosen,
                         "kind": kind})
            made += 1
    for _ in range(60):
        rows.append({"prompt": content(), "styles": [], "kind": "none"})
    for text in ("a shape on a plain background", "a simple picture of an object",
                 "an object in the middle of the image", "two shapes next to each other"):
        rows.append({"prompt": text, "styles": [], "kind": "none"})
    for row in rows:  # paraphrases must avoid the style's own name
        for slug in row["styles"]:
            lowered = row["prompt"].lower()
            assert slug.replace("-", " ") not in lowered and slug not in lowered, row
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


if __name__ == "__main__":
    rows = build()
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("single", "double", "triple", "none")}
    print(len(rows), kinds)
