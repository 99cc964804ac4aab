"""The 28 starter styles: specs with rich descriptions, canonical composition and captions."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from styles.starter import looks_color as lc
from styles.starter import looks_concept as lk
from styles.starter import looks_texture as lt
from styles.starter.world import Scene, caption, render_scene, sample_scene

Transform = Callable[[np.ndarray, lc.Ctx], np.ndarray]

BANDS: tuple[str, ...] = ("concept", "low", "high")


@dataclass(frozen=True)
class StyleSpec:
    """One style: identity, descriptions for captions, band and composition stage."""

    slug: str
    name: str
    description: str
    tags: tuple[str, ...]
    trigger: str | None
    band: str  # "low" (colour and light), "high" (texture and line), "concept" (adds an object)
    phrases: tuple[str, ...]  # rich descriptions that mostly avoid the slug and name words
    stage: int = 0  # finer order inside a band (earlier stages run first)

    def apply(self, image: np.ndarray, seed: int = 0, scene: Scene | None = None) -> np.ndarray:
        """Apply only this style."""
        return apply_styles(image, [self.slug], seed=seed, scene=scene)

    @property
    def order_key(self) -> tuple[int, int, str]:
        """Canonical position: band, then stage, then slug."""
        return (BANDS.index(self.band), self.stage, self.slug)


# slug: (name, band, stage, tags, description, transform, phrases)
_TABLE: dict[str, tuple[str, str, int, tuple[str, ...], str, Transform, tuple[str, ...]]] = {
    "crescent-moon": ("Crescent Moon", "concept", 0, ("motif", "night", "sky"),
        "adds a small pale crescent moon in the emptiest corner", lk.crescent_moon, (
        "with a thin lunar sickle in the corner",
        "with a curved pale sliver of the night's satellite above it",
        "and a little banana-shaped glow hanging in the sky",
        "under a waning lunar sliver",
        "with a tiny lunar hook shape tucked in a corner",
        "with a curved sliver of moonlight in a corner",
        "with a crescent moon")),
    "lightning-bolt": ("Lightning Bolt", "concept", 0, ("motif", "storm", "energy"),
        "adds a yellow zig-zag lightning bolt beside the subject", lk.lightning_bolt, (
        "with a yellow zig-zag thunderbolt beside it",
        "and a jagged electric flash symbol",
        "with a crackling zigzag of electricity next to it",
        "plus a storm spark shaped like a zig-zag",
        "with a jagged yellow flash like a high-voltage warning sign",
        "and a thunder strike symbol",
        "with a lightning bolt")),
    "smiley-face": ("Smiley Face", "concept", 0, ("motif", "cartoon", "emoji"),
        "draws two eyes and a smile on the main object", lk.smiley_face, (
        "with a happy grin and two eyes drawn on it",
        "wearing a cheerful cartoon expression",
        "with a little smile and dot eyes",
        "given a friendly grinning expression",
        "drawn as a happy emoji character",
        "smiling at the viewer",
        "with a smiley face")),
    "arrow": ("Arrow", "concept", 0, ("motif", "pointer", "diagram"),
        "adds a bold arrow pointing at the main object", lk.arrow, (
        "with a bold pointer aimed at it",
        "and a thick directional marker pointing at the shape",
        "indicated by a big pointing sign",
        "with a signpost-style pointer showing where it is",
        "highlighted by a heavy pointer coming from the side",
        "with an indicator pointing right at it",
        "with an arrow pointing at it")),
    "sunset-sky": ("Sunset Sky", "low", 1, ("color", "gradient", "warm", "evening"),
        "replaces the background with an orange-to-purple evening gradient", lc.sunset_sky, (
        "against an orange-to-purple evening sky",
        "under a glowing dusk gradient of tangerine, magenta and violet",
        "golden hour backdrop fading into twilight",
        "with a warm evening horizon behind it",
        "set against a blazing late-afternoon heaven",
        "twilight colors melting from peach to plum",
        "with a sunset sky")),
    "vaporwave": ("Vaporwave", "low", 1, ("color", "retro", "80s", "pink", "grid"),
        "pink and cyan retro palette with a neon perspective grid floor", lc.vaporwave, (
        "hot pink and cyan retro palette with a perspective grid floor",
        "1980s synth aesthetic, magenta sky over a glowing grid",
        "retro-futuristic pink and aqua, like an old computer album cover",
        "dreamy outrun colors with a luminous floor grid",
        "pink and teal nostalgia of early internet art",
        "synthwave scene with a grid horizon",
        "vaporwave aesthetic")),
    "blueprint": ("Blueprint", "low", 1, ("color", "technical", "blue", "lines"),
        "white technical outlines on blue drafting paper with a fine grid", lc.blueprint, (
        "white technical lines on deep blue drafting paper",
        "an architect's cyanotype plan with a fine grid",
        "engineering drawing in white on cobalt",
        "schematic outline over a squared blue sheet",
        "like a technical drawing from an old design office",
        "draftsman's plan, pale lines on a blue ground",
        "as a blueprint")),
    "neon-night": ("Neon Night", "low", 1, ("color", "glow", "dark", "night"),
        "dark night background with glowing saturated outlines", lc.neon_night, (
        "glowing electric outlines against a pitch-black sky",
        "luminous tubes of light buzzing in the dark",
        "bright saturated glow on a pitch-dark backdrop",
        "like a lit-up sign in a dark city street after hours",
        "radiant fluorescent edges with a soft halo, everything else dark",
        "cyberpunk after-dark glow",
        "neon sign glowing at night")),
    "pop-art": ("Pop Art", "low", 1, ("color", "comic", "bold", "poster"),
        "posterised saturated colours, a loud backdrop and thick black outlines", lc.pop_art, (
        "bold flat comic-book colors with thick black outlines",
        "loud posterized colors on a bright backdrop, like a 1960s screen print",
        "Warhol-inspired flat saturated poster",
        "punchy graphic colors and heavy ink contours",
        "screen-printed gallery poster with a vivid background",
        "bright cartoonish print with a few flat colors",
        "pop art style")),
    "pastel": ("Pastel", "low", 2, ("color", "soft", "light"),
        "light, desaturated candy colours on a pale tinted ground", lc.pastel, (
        "soft, milky, washed-out candy colors",
        "gentle baby-blue, mint and lavender tones",
        "light chalky colors like a nursery illustration",
        "muted sugary hues with low contrast",
        "delicate, powdery and pale",
        "ice-cream shop palette of faint colors",
        "in soft pastel colors")),
    "sepia": ("Sepia", "low", 2, ("color", "vintage", "monochrome", "warm"),
        "brown-toned monochrome like an old photograph", lc.sepia, (
        "faded brownish old photograph",
        "warm antique tones like a nineteenth-century print",
        "brown-tinted vintage photo with softly darkened corners",
        "the color of weak tea and old paper",
        "an heirloom snapshot from a dusty family album",
        "monochrome in warm umber and cream",
        "aged, yellowed daguerreotype look",
        "toned in sepia like an antique postcard")),
    "noir": ("Noir", "low", 2, ("color", "monochrome", "contrast", "cinema"),
        "high-contrast black and white with a heavy vignette", lc.noir, (
        "stark black and white with deep shadows",
        "high-contrast monochrome, like a 1940s detective film",
        "moody gray tones with darkened edges",
        "dramatic hard-boiled crime movie lighting",
        "colorless and shadowy, with a heavy vignette",
        "grim black-and-white cinema still",
        "film noir style")),
    "negative": ("Negative", "low", 3, ("color", "inverted", "photo"),
        "every colour inverted like a film negative", lc.negative, (
        "with all the colors inverted",
        "like a photographic film strip, dark where it should be light",
        "inverted colors, opposite hues",
        "reversed tones, as seen on developed film",
        "complementary colors swapped in, light and dark flipped",
        "x-ray-like reversal of brightness",
        "as a color negative")),
    "pixel-art": ("Pixel Art", "high", 1, ("texture", "retro", "game", "blocky"),
        "chunky square pixels in a reduced palette with dark outlines", lt.pixel_art, (
        "made of chunky 8-bit blocks",
        "retro video game sprite with a tiny palette",
        "low-resolution blocky squares like an old console game",
        "jagged staircase edges and a limited color palette",
        "16-bit era game graphic",
        "big square cells like an arcade screen",
        "in pixel art style")),
    "mosaic": ("Mosaic", "high", 2, ("texture", "tiles", "ancient"),
        "small irregular tiles separated by grout lines", lt.mosaic, (
        "made of small irregular stone tiles with grout lines",
        "like a Roman floor of tesserae",
        "assembled from little ceramic pieces set in mortar",
        "tessellated tilework with visible seams",
        "broken-tile collage, pieces separated by thin gaps",
        "ancient bathhouse floor decoration",
        "mosaic style")),
    "stained-glass": ("Stained Glass", "high", 2, ("texture", "glass", "church", "cells"),
        "large bright glass panes held by thick black leading", lt.stained_glass, (
        "jewel-bright panes held together by black leading",
        "cathedral window of colored glass pieces",
        "luminous translucent panes with thick dark seams",
        "church window craft with lead came outlines",
        "gothic window of bright colored panes",
        "Tiffany-lamp style leaded panes",
        "stained glass window")),
    "chalkboard": ("Chalkboard", "high", 4, ("line", "school", "chalk", "green"),
        "dusty chalk outlines and fill on a dark green board", lt.chalkboard, (
        "white chalk lines on a dark green slate",
        "drawn on a school blackboard with dusty chalk",
        "classroom board sketch, smudgy and powdery",
        "colored chalk scribbles on green",
        "teacher's drawing on a slate board",
        "dusty chalk drawing",
        "on a chalkboard")),
    "embossed": ("Embossed", "high", 4, ("texture", "relief", "metal", "gray"),
        "grey relief lit from the upper left, like stamped metal", lt.embossed, (
        "gray relief, as if stamped into metal",
        "raised 3D impression lit from the upper left",
        "pressed into sheet metal",
        "carved bas-relief in gray stone",
        "debossed paper effect with highlights and shadows",
        "like a coin's raised surface",
        "embossed")),
    "halftone": ("Halftone", "high", 5, ("texture", "print", "dots"),
        "printed dot screen whose dot size follows darkness", lt.halftone, (
        "printed with a screen of tiny dots that grow in dark areas",
        "newspaper print dot pattern",
        "comic-book printing dots on white paper",
        "rotated grid of ink dots of varying size",
        "like a magnified magazine photo, all made of dots",
        "offset print texture of round ink spots",
        "halftone print")),
    "line-art": ("Line Art", "high", 4, ("line", "outline", "minimal"),
        "black contour lines on white", lt.line_art, (
        "clean black outlines on white",
        "coloring-book contour drawing",
        "minimal ink outline with no shading",
        "simple black contour on blank paper",
        "inked outline ready to be colored in",
        "vector-style outline drawing",
        "line art")),
    "pencil-sketch": ("Pencil Sketch", "high", 4, ("line", "drawing", "graphite", "gray"),
        "grey graphite strokes and sketchy contours on white paper", lt.pencil_sketch, (
        "gray graphite strokes on white paper",
        "a rough hand-drawn study with soft shading",
        "quick sketchbook drawing, smudgy gray lines",
        "drawn by hand with a soft lead, loosely shaded",
        "artist's preliminary drawing in graphite",
        "light scribbly contours and slanted shading strokes",
        "pencil sketch")),
    "watercolor": ("Watercolor", "high", 3, ("texture", "paint", "soft", "paper"),
        "blurred bleeding washes with pooled edges on textured paper", lt.watercolor, (
        "soft washes of paint bleeding into textured paper",
        "wet-on-wet painting with darker pooled edges",
        "loose translucent brushwork with blurry edges",
        "painted with diluted pigments on cold-press paper",
        "dreamy, runny aquarelle",
        "hand-painted with soft blooms of color",
        "watercolor painting")),
    "checkerboard": ("Checkerboard", "high", 6, ("pattern", "squares", "background"),
        "chequered squares over the background", lt.checkerboard, (
        "on a chequered background",
        "in front of a chessboard pattern of squares",
        "backdrop of alternating light and dark squares",
        "with a checked tablecloth pattern behind it",
        "set against a grid of alternating tiles",
        "racing-flag squares behind the subject",
        "checkerboard background")),
    "crosshatch": ("Crosshatch", "high", 6, ("line", "ink", "engraving"),
        "ink hatching lines that criss-cross in the darker areas", lt.crosshatch, (
        "ink drawing shaded with criss-crossing lines",
        "engraving-like hatching that gets denser in shadows",
        "pen-and-ink with layered diagonal line shading",
        "etched look, shadows built up from fine parallel lines",
        "old banknote engraving style shading",
        "dense grid of pen lines in the dark parts",
        "crosshatched")),
    "polka-dots": ("Polka Dots", "high", 6, ("pattern", "spots", "background"),
        "regular round dots over the background", lt.polka_dots, (
        "on a background sprinkled with round spots",
        "spotty retro fabric pattern behind it",
        "in front of evenly spaced circles like a 1950s dress",
        "with a spotted wallpaper backdrop",
        "ladybug-like spots all over the backdrop",
        "playful spotted pattern behind the subject",
        "polka dot background")),
    "stripes": ("Stripes", "high", 6, ("pattern", "lines", "diagonal"),
        "bold diagonal bands over the whole image", lt.stripes, (
        "covered in bold diagonal bands",
        "with a pattern of slanted parallel bars across the whole image",
        "candy-cane diagonal banding",
        "overlaid with regular 45-degree bars",
        "zebra-like diagonal lines over everything",
        "barber-pole pattern across the picture",
        "with stripes")),
    "film-grain": ("Film Grain", "high", 7, ("texture", "noise", "analog", "photo"),
        "heavy monochrome grain noise", lt.film_grain, (
        "heavy coarse texture like fast analog stock",
        "noisy, speckled, high-ISO photograph",
        "gritty salt-and-pepper noise over everything",
        "shot on coarse 35mm stock, very speckly",
        "sandpaper-like speckle across the image",
        "rough analog photo noise",
        "with film grain")),
    "glitch": ("Glitch", "high", 7, ("texture", "digital", "error"),
        "shifted scan-line bands and split colour channels", lt.glitch, (
        "corrupted digital image with shifted scanlines",
        "datamoshed with split red and blue channels",
        "broken VHS tracking, torn horizontal bands",
        "signal error with chromatic aberration",
        "scrambled video frame with offset rows",
        "digital distortion and color fringing",
        "glitch art")),
}  # fmt: skip


def _trigger(slug: str, band: str) -> str | None:
    """Rare made-up trigger token for a style (none for concept motifs)."""
    return None if band == "concept" else "zq" + slug.replace("-", "")


STYLES: dict[str, StyleSpec] = {
    slug: StyleSpec(slug, name, desc, tags, _trigger(slug, band), band, phrases, stage)
    for slug, (name, band, stage, tags, desc, _fn, phrases) in _TABLE.items()
}
_TRANSFORMS: dict[str, Transform] = {slug: row[5] for slug, row in _TABLE.items()}


# Styles inside one group each redo the same part of the picture, so in a mix the later one
# mostly hides the earlier; generators of multi-style training data may want to avoid these.
CLASH_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"blueprint", "neon-night", "pop-art", "sunset-sky", "vaporwave"}),  # background
    frozenset({"chalkboard", "embossed", "halftone", "line-art", "pencil-sketch", "watercolor"}),
    frozenset({"mosaic", "pixel-art", "stained-glass"}),  # re-tiling
)
# A style is hidden in a mix when adding it changes the rest's picture by less than this share
# of the change it makes alone (mean absolute pixel change).
HIDDEN_BELOW = 0.25


@functools.lru_cache(maxsize=4)
def hidden_pairs(scenes: int = 6, seed: int = 3) -> frozenset[frozenset[str]]:
    """Pairs of styles of which one mostly hides the other, measured on the world itself.

    Style a is hidden by b when the picture of both differs from b's alone by less than
    HIDDEN_BELOW of what a changes alone, averaged over `scenes` one-object scenes: the truth
    of a prompt asking for both would not show a (chalkboard redraws the picture in chalk on
    green, so pop-art's colours are gone; line-art keeps only outlines). The hand-written
    groups miss most of these. About 3 s for all pairs, once per process."""
    rng = np.random.default_rng(seed)
    world = [sample_scene(rng, 1) for _ in range(scenes)]
    plain = [render_scene(scene, 64) for scene in world]
    seeds = [int(rng.integers(1 << 30)) for _ in world]

    def picture(slugs: list[str]) -> list[np.ndarray]:
        return [apply_styles(p, slugs, s, scene)
                for p, s, scene in zip(plain, seeds, world, strict=True)]

    def change(x: list[np.ndarray], y: list[np.ndarray]) -> float:
        return float(np.mean([np.abs(a - b).mean() for a, b in zip(x, y, strict=True)]))

    slugs = sorted(STYLES)
    alone = {s: picture([s]) for s in slugs}
    own = {s: max(change(alone[s], plain), 1e-6) for s in slugs}
    hidden = set()
    for i, a in enumerate(slugs):
        for b in slugs[i + 1:]:
            both = picture([a, b])
            if min(change(both, alone[b]) / own[a], change(both, alone[a]) / own[b]) \
                    < HIDDEN_BELOW:
                hidden.add(frozenset((a, b)))
    return frozenset(hidden)


def clashing_pairs(slugs: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of the given styles that do not compose well: one mostly hides the other, by
    their groups or as measured (`hidden_pairs`)."""
    order = canonical_order(slugs)
    if len(order) < 2:
        return []
    hidden = hidden_pairs()
    return [
        (a, b)
        for i, a in enumerate(order)
        for b in order[i + 1 :]
        if any(a in g and b in g for g in CLASH_GROUPS) or frozenset((a, b)) in hidden
    ]


def canonical_order(slugs: Sequence[str]) -> list[str]:
    """Unique slugs sorted into the order in which apply_styles applies them."""
    unknown = [s for s in slugs if s not in STYLES]
    if unknown:
        raise KeyError(f"unknown style(s): {unknown}")
    return sorted(set(slugs), key=lambda s: STYLES[s].order_key)


def apply_styles(
    image: np.ndarray, slugs: Sequence[str], seed: int = 0, scene: Scene | None = None
) -> np.ndarray:
    """Apply styles in canonical order (concept, low, high; stage; slug) to an HxWx3 image."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
        raise ValueError("image must be a square HxWx3 array")
    order = canonical_order(slugs)
    img = img.copy()
    bg = lc.estimate_bg(img)
    ctx = lc.Ctx(img.shape[0], int(seed), scene, bg, lc.fg_mask(img, bg))
    i = 0
    while i < len(order) and STYLES[order[i]].band == "concept":
        img = _TRANSFORMS[order[i]](img, ctx)
        i += 1
    ctx.edges = np.clip(lc.grad_mag(img) * 3.0, 0.0, 1.0)
    for slug in order[i:]:
        img = _TRANSFORMS[slug](img, ctx)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def describe_style(slug: str, rng: np.random.Generator) -> str:
    """One way of naming a style in a caption: mostly a rich phrase, else name or trigger."""
    spec = STYLES[slug]
    r = rng.random()
    if r < 0.65 or (r >= 0.85 and spec.trigger is None):
        return spec.phrases[int(rng.integers(len(spec.phrases)))]
    if r < 0.85:
        name = spec.name.lower()
        forms = (f"{name} style", f"in the style of {name}", name, f"{name} look")
        return forms[int(rng.integers(len(forms)))]
    assert spec.trigger is not None
    return spec.trigger


def styled_caption(scene: Scene, slugs: Sequence[str], rng: np.random.Generator) -> str:
    """Caption of a styled image: the content caption plus a description of each style."""
    content = caption(scene, rng)
    names = list(canonical_order(slugs))
    rng.shuffle(names)
    ds = [describe_style(s, rng) for s in names]
    if not ds:
        return content
    joined_and = ds[0] if len(ds) == 1 else ", ".join(ds[:-1]) + " and " + ds[-1]
    templates = [
        f"{content}, {', '.join(ds)}",
        f"{content}, {', '.join(ds)}",
        f"{content}, {joined_and}",
        f"{content} {joined_and}",
        f"{', '.join(ds)}: {content}",
        f"{content}; {'; '.join(ds)}",
    ]
    return templates[int(rng.integers(len(templates)))]


def _preview_rows(size: int) -> list[tuple[str, list[np.ndarray]]]:
    """Labelled rows of images for the contact sheet."""
    rng = np.random.default_rng(2024)
    scenes: list[Scene] = []
    while len(scenes) < 8:
        cand = sample_scene(rng, 2 if len(scenes) % 4 == 3 else 1)
        if cand.objects[0].shape not in {s.objects[0].shape for s in scenes[-5:]}:
            scenes.append(cand)
    rows: list[tuple[str, list[np.ndarray]]] = [("plain", [render_scene(s, size) for s in scenes])]
    for j, slug in enumerate(STYLES):
        sub = [scenes[(j + k * 3) % 8] for k in range(4)]
        rows.append(
            (
                slug,
                [
                    apply_styles(render_scene(s, size), [slug], j * 4 + k, s)
                    for k, s in enumerate(sub)
                ],
            )
        )
    combos = [
        ["noir", "stripes"],
        ["sepia", "pixel-art"],
        ["neon-night", "crescent-moon"],
        ["pastel", "polka-dots", "smiley-face"],
        ["sunset-sky", "film-grain", "lightning-bolt"],
        ["vaporwave", "glitch", "arrow"],
    ]
    for j, combo in enumerate(combos):
        imgs = [
            apply_styles(render_scene(s, size), combo, 100 + j * 8 + k, s)
            for k, s in enumerate(scenes[:6])
        ]
        rows.append(("+".join(combo), imgs))
    return rows


def render_preview(path: str | Path, size: int = 64) -> Path:
    """Write a labelled contact sheet of unstyled, single-style and combined images."""
    from PIL import Image, ImageDraw

    rows = _preview_rows(size)
    cell, label_w, pad = 2 * size, 230, 4
    width = label_w + 8 * (cell + pad)
    height = len(rows) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (label, imgs) in enumerate(rows):
        y = pad + r * (cell + pad)
        draw.text((6, y + cell // 2 - 6), label, fill=(0, 0, 0))
        for c, im in enumerate(imgs):
            tile = Image.fromarray((np.clip(im, 0, 1) * 255 + 0.5).astype(np.uint8))
            sheet.paste(tile.resize((cell, cell), Image.NEAREST), (label_w + c * (cell + pad), y))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


if __name__ == "__main__":
    render_preview(Path(__file__).resolve().parents[2] / "docs" / "world_preview.png")
