"""Contact sheet of the starter pack: base samples, every style at weight 1, a few pairs.

    .venv/bin/python benchmarks/starter_contact_sheet.py [--out docs/starter_contact_sheet.png]
"""

from __future__ import annotations

import argparse

from common import ROOT
from PIL import Image, ImageDraw

from app.service import GenerateRequest, LoraRequest, LoratlasService, ServiceConfig
from styles.starter.looks import STYLES
from styles.starter.paths import starter_loras

PROMPTS = ["a red star", "a blue circle", "a yellow heart", "a green triangle",
           "a purple diamond", "an orange cross", "a pink ring", "a white square"]
PAIRS = [("noir", "stripes"), ("sepia", "pixel-art"), ("neon-night", "crescent-moon"),
         ("pastel", "polka-dots"), ("blueprint", "film-grain")]


def row(service: LoratlasService, loras: tuple[str, ...], prompts: list[str]) -> list[Image.Image]:
    return [service.generate(GenerateRequest(
        prompt=p, seed=i, loras=[LoraRequest(s, 1.0) for s in loras])).images[0]
        for i, p in enumerate(prompts)]


def sheet(rows: list[tuple[str, list[Image.Image]]], scale: int = 2,
          label: int = 150) -> Image.Image:
    cell = 64 * scale + 4
    width = label + cell * max(len(images) for _, images in rows)
    canvas = Image.new("RGB", (width, cell * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, images) in enumerate(rows):
        draw.text((6, r * cell + cell // 2 - 6), name, fill="black")
        for c, image in enumerate(images):
            canvas.paste(image.resize((64 * scale, 64 * scale), Image.NEAREST),
                         (label + c * cell + 2, r * cell + 2))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "starter_contact_sheet.png"))
    args = parser.parse_args()
    service = LoratlasService(ServiceConfig(device="cpu"))
    rows = [("base", row(service, (), PROMPTS))]
    shipped = starter_loras()
    rows += [(slug, row(service, (slug,), PROMPTS[:4])) for slug in sorted(STYLES)
             if slug in shipped]
    rows += [(" + ".join(pair), row(service, pair, PROMPTS[:4])) for pair in PAIRS
             if set(pair) <= set(shipped)]
    sheet(rows).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
