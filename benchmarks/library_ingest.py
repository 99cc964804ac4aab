"""Upload → on the atlas, end to end, on the starter pack; ingest throughput; atlas updates.

1. A fresh library (seeded with the 28 starter styles) receives new style files — each the sum
   of two starter LoRAs (their factors concatenated: a genuinely new kohya file, not a
   duplicate) — through `LoratlasService.upload`, exactly as the web page's upload does. Timed
   from the call to the style being on the map (`service.atlas()` lists it), per step.
2. Throughput: SD 1.5-size LoRAs (random weights, kohya layout, every attention and
   feed-forward layer of the SD 1.5 UNet) uploaded in one call into the same starter library:
   validated, stored, embedded, indexed and mapped, kept as another family (no renders: their
   base is not loaded).
3. Atlas update: one new style placed on a map of 1e3 and 1e4 synthetic styles.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, machine_line

from app.library import PROBE_PROMPTS, PROBE_STEPS
from app.service import LoratlasService, ServiceConfig
from styles.architectures import reference_table
from styles.atlas import AtlasLayout
from styles.lora import LoraModule
from styles.writers import save_kohya


def blended(a, b) -> list[LoraModule]:
    """The LoRA whose delta is the sum of two LoRAs' deltas (rank = the sum of ranks)."""
    out = []
    for target in sorted(set(a.modules) | set(b.modules)):
        parts = [m.modules[target] for m in (a, b) if target in m.modules]
        down = torch.cat([p.down.float() for p in parts])
        up = torch.cat([p.up.float() * p.scale for p in parts], dim=1)
        out.append(LoraModule(target, parts[0].kind, down, up, 1.0))
    return out


def sd15_lora(path: Path, seed: int, rank: int = 16) -> Path:
    """An SD 1.5 LoRA as kohya writes one (attention and feed-forward layers), random weights."""
    table = reference_table("sd1")
    g = torch.Generator().manual_seed(seed)
    modules = []
    for target in table.order:
        if target.startswith("unet.") and (".attn1." in target or ".attn2." in target
                                           or ".ff." in target):
            spec = table.specs[target]
            modules.append(LoraModule(target, spec.kind,
                                      torch.randn(rank, spec.in_features, generator=g) * 0.01,
                                      torch.randn(spec.out_features, rank, generator=g) * 0.01))
    return save_kohya(modules, path, metadata={"ss_output_name": f"sd15 style {seed}",
                                               "ss_base_model_version": "sd_v1"}, alpha=rank,
                      dtype=torch.float16)


def sd15_throughput(service: LoratlasService, work: Path, count: int) -> list[str]:
    files = [sd15_lora(work / f"sd15-{i}.safetensors", 100 + i) for i in range(count)]
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    start = time.perf_counter()
    reports = service.upload(files)
    seconds = time.perf_counter() - start
    assert all(r.ok for r in reports), reports
    families = {service.library.catalog.get(r.slug).family for r in reports}
    on_map = {p.slug for p in service.atlas().points} >= {r.slug for r in reports}
    return ["## Throughput: SD 1.5-size LoRAs", "",
            f"{count} files (rank 16, every attention and feed-forward layer of the SD 1.5 UNet, "
            f"fp16, {megabytes / count:.1f} MB each) in one upload call: **{seconds:.2f} s, "
            f"{count / seconds:.2f} files/s, {megabytes / seconds:.0f} MB/s**. Family "
            f"{', '.join(sorted(families))}; on the map: {on_map}. Their base is not loaded, so "
            "they get no probe renders and no weights-view vector: search finds them by "
            "their metadata only, and the engine refuses to apply them to the starter base."]


def atlas_update(sizes: tuple[int, ...] = (1_000, 10_000), dim: int = 256, new: int = 20
                 ) -> list[str]:
    import numpy as np

    lines = ["## Atlas update", "",
             f"Synthetic unit vectors ({dim}-d, 12 gaussian groups); the map is fitted once, "
             f"then {new} new styles are placed one at a time (`AtlasLayout.place`: nothing "
             "else moves).", "", "| styles | fit s | place one: median ms | max ms |",
             "|---:|---:|---:|---:|"]
    for n in sizes:
        rng = np.random.default_rng(n)
        centres = rng.normal(size=(12, dim))
        vectors = centres[rng.integers(12, size=n + new)] + 0.5 * rng.normal(size=(n + new, dim))
        ids = [f"s{i:06d}" for i in range(n + new)]
        start = time.perf_counter()
        atlas = AtlasLayout.fit({i: v for i, v in zip(ids[:n], vectors[:n], strict=True)})
        fit = time.perf_counter() - start
        times = []
        for i in range(n, n + new):
            start = time.perf_counter()
            atlas.place(ids[i], vectors[i])
            times.append((time.perf_counter() - start) * 1000)
        lines.append(f"| {n} | {fit:.1f} | {statistics.median(times):.1f} | {max(times):.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--sd15", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="loratlas-ingest-"))
    service = LoratlasService(ServiceConfig(library=str(work / "library"), device="cpu"))
    started = time.perf_counter()
    library = service.library  # opening seeds the starter styles (shipped views, no renders)
    seed_seconds = time.perf_counter() - started
    slugs = sorted(library.catalog.ids())
    pairs = [(slugs[i], slugs[(i * 7 + 3) % len(slugs)]) for i in range(args.uploads)]
    rows = []
    for left, right in pairs:
        path = work / f"{left}+{right}.safetensors"
        save_kohya(blended(library.lora(left), library.lora(right)), path,
                   metadata={"ss_output_name": f"{left} and {right}"})
        marks: dict[str, float] = {}
        start = time.perf_counter()

        def mark(index: int, step: str, fraction: float, marks=marks, start=start) -> None:
            marks.setdefault(step, time.perf_counter() - start)

        report = service.upload([path], on_progress=mark)[0]
        on_map = report.slug in {p.slug for p in service.atlas().points}
        total = time.perf_counter() - start
        assert report.ok and report.slug and on_map, report
        rows.append((path.name, total, marks))
    totals = [r[1] for r in rows]
    lines = ["# Upload → atlas, end to end (starter pack)", "", machine_line(),
             f"Command: `.venv/bin/python benchmarks/library_ingest.py --uploads {args.uploads} "
             f"--sd15 {args.sd15} --threads {args.threads}`", "",
             f"Fresh library seeded with {len(slugs)} starter styles in {seed_seconds:.1f} s "
             "(shipped thumbnails and view vectors: nothing rendered).", "",
             f"**Median upload → on the map: {statistics.median(totals):.2f} s** "
             f"(max {max(totals):.2f} s, target < 2 s), over {len(rows)} new files; "
             f"each is validated, stored, rendered ({len(PROBE_PROMPTS)} probe images, "
             f"{PROBE_STEPS} steps, one batch), embedded "
             "(metadata, probes, weights), indexed (FAISS, saved atomically), committed "
             "and placed on the map.", "",
             "| file | total s | stored | rendered | embedded | indexed | done |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, total, marks in rows:
        cells = " | ".join(f"{marks.get(s, float('nan')):.2f}" for s in
                           ("stored", "rendered", "embedded", "indexed", "done"))
        lines.append(f"| {name} | {total:.2f} | {cells} |")
    lines += ["", "Columns: seconds from the upload call until each step *began* "
              "(`done` = after the commit and the map placement).", ""]
    lines += [*sd15_throughput(service, work, args.sd15), "", *atlas_update()]
    (RESULTS / "library_ingest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
