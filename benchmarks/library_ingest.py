"""Upload → on the atlas, end to end, on the starter pack.

A fresh library (seeded with the 28 starter styles) receives new style files — each the sum of
two starter LoRAs (their factors concatenated: a genuinely new kohya file, not a duplicate) —
through `LoratlasService.upload`, exactly as the web page's upload does. Timed from the call to
the style being on the map (`service.atlas()` lists it), per step of the ingest.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=5)
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
             f"--threads {args.threads}`", "",
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
              "(`done` = after the commit and the map placement)."]
    (RESULTS / "library_ingest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
