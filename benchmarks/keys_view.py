"""A training-free weights view, measured before it is built into the retriever.

The weights view of the retriever is a learned encoder: on the 28 LoRAs it was trained with it
is strong, on LoRAs of styles it never saw it is below chance (retrieval_quality.md). This
asks whether the weights themselves say which words a LoRA reacts to, with nothing learned:
a LoRA's cross-attention key and value deltas ΔW (text hidden size → attention width) change
the attention most for the text tokens h with large ‖ΔW h‖². Over a prompt's tokens that is
⟨ΔWᵀΔW, Σ h hᵀ / n⟩: an inner product between a per-LoRA Gram matrix (from the file) and a
per-prompt token covariance (from the base model's text encoder), so it fits a FAISS
inner-product index. Scores are standardised per LoRA against style-free prompts, as the
retriever's calibration does.

Evaluated on the retrieval prompt set (paraphrases never used in training), and, as an upper
reference, on each style's own training phrases.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/keys_view.py
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from common import RESULTS, ROOT, machine_line

from app.starter_retrieval import calibration_prompts, style_texts
from fusion.base import load_base
from styles.reader import ReadOptions, read_lora
from styles.starter.paths import PIPELINE_DIR, starter_loras

CROSS_ATTENTION = ("attn2.to_k", "attn2.to_v")


def token_covariance(pipe, texts: list[str]) -> np.ndarray:
    """(n, d, d): mean outer product of each text's token states (no start/end tokens)."""
    ids = pipe.tokenizer(texts, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt")
    with torch.no_grad():
        states = pipe.text_encoder(ids.input_ids).last_hidden_state.double()
    out = []
    for row, mask in zip(states, ids.attention_mask.bool(), strict=True):
        tokens = row[mask][1:-1]
        out.append((tokens.T @ tokens / max(len(tokens), 1)).numpy())
    return np.stack(out)


def lora_gram(lora) -> np.ndarray:
    """Σ over cross-attention key/value modules of ΔWᵀΔW, each scaled to unit norm."""
    total = 0.0
    for target, module in lora.modules.items():
        if target.endswith(CROSS_ATTENTION):
            delta = module.delta().double().numpy()
            gram = delta.T @ delta
            total = total + gram / np.linalg.norm(gram)
    return np.asarray(total)


def recall(scores: np.ndarray, truth: list[int], k: int) -> float:
    ranks = [int((row > row[t]).sum()) for row, t in zip(scores, truth, strict=True)]
    return float(np.mean([r < k for r in ranks]))


def main() -> None:
    torch.set_num_threads(1)
    started = time.time()
    base = load_base(PIPELINE_DIR, device="cpu")
    files = starter_loras()
    slugs = sorted(files)
    grams = np.stack([lora_gram(read_lora(files[s], ReadOptions(base_table=base.table)))
                      for s in slugs])
    nulls, _ = calibration_prompts()
    null = np.einsum("lij,pij->pl", grams, token_covariance(base.pipe, nulls))
    mean, std = null.mean(0), null.std(0) + 1e-12

    def z(texts: list[str]) -> np.ndarray:
        return (np.einsum("lij,pij->pl", grams, token_covariance(base.pipe, texts)) - mean) / std

    rows = [json.loads(line) for line in
            (ROOT / "benchmarks" / "data" / "retrieval_prompts.jsonl").read_text().splitlines()]
    single = [r for r in rows if r["kind"] == "single" and r["styles"][0] in files]
    scores = z([r["prompt"] for r in single])
    truth = [slugs.index(r["styles"][0]) for r in single]
    own = [(text, slugs.index(s)) for s in slugs for text in style_texts(s)]
    own_scores = z([t for t, _ in own])
    chance = 3 / len(slugs)
    lines = ["# A training-free weights view (cross-attention key/value Gram matrices)", "",
             machine_line(), "Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/"
             "keys_view.py`", "",
             f"{len(slugs)} starter LoRAs; scores standardised per LoRA against "
             f"{len(nulls)} style-free prompts (the retriever's calibration prompts). Nothing "
             "is trained, so every LoRA is unseen.", "",
             "| prompts | n | R@1 | R@3 |", "|---|---:|---:|---:|",
             f"| retrieval benchmark paraphrases (single style) | {len(single)} | "
             f"{recall(scores, truth, 1):.3f} | {recall(scores, truth, 3):.3f} |",
             f"| the styles' own training phrases (upper reference) | {len(own)} | "
             f"{recall(own_scores, [t for _, t in own], 1):.3f} | "
             f"{recall(own_scores, [t for _, t in own], 3):.3f} |", "",
             f"Chance R@3 = {chance:.3f}. For comparison, the learned weights encoder on styles "
             "it never saw (4-fold leave-styles-out, retrieval_quality.md): R@3 0.071. The "
             "signal is mostly lexical: it is strong for the words the LoRA was captioned "
             "with and weaker for paraphrases. Not yet a retriever view (it needs a "
             "query encoder of its own: the base model's text encoder).", "",
             f"Wall time {time.time() - started:.0f} s."]
    (RESULTS / "keys_view.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
