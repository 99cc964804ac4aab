"""A training-free weights view: the words a LoRA's cross-attention reacts to, in the text space.

A LoRA's cross-attention key and value deltas ΔW (text hidden size → attention width) change
the attention most for the text tokens h with a large ‖ΔW h‖². Scored over a vocabulary (the
base text encoder's state of each word), that says which words the LoRA reacts to; the LoRA's
vector is the mean text embedding (open_clip, the shared space) of its top words, weighted by
how far each stands out. Nothing is trained, so a LoRA of a style never seen before is placed
as well as any other: it is what the learned weights encoder cannot do
(`benchmarks/results/retrieval_quality.md`).

How far a word "stands out" is measured against a reference set of LoRAs on the same base
(each word's mean and spread of reactions over them), which removes the directions every LoRA
moves. Without a reference (fewer than `MIN_REFERENCE` LoRAs), a word's reaction is divided by
its own energy ‖h‖² (how a random delta would react) and standardised over the vocabulary.

The vocabulary is the tokenizer's whole-word tokens that the text encoder has learned: when
most of the vocabulary is untouched by training (the starter pack's encoder learned a few
hundred words), only the words whose input embedding stands out of the bulk by norm are kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrieval.embedders import Embedder
from styles.lora import LoraFile

CROSS_ATTENTION = ("attn2.to_k", "attn2.to_v")
MIN_REFERENCE = 5
_WORD = re.compile(r"[a-z]{3,}")


def vocabulary(tokenizer, text_encoder, spread: float = 4.0, limit: int = 8000) -> list[str]:
    """Whole-word tokens the text encoder knows.

    A vocabulary mostly left at its random initialisation (the starter pack's encoder learned a
    few hundred words of CLIP's 49408 tokens) shows it: the bulk of the input embedding norms
    sits tightly around one value, and the learned words stand out above it; those are kept.
    Otherwise (a fully trained encoder, as SD's CLIP) the `limit` most frequent words are kept:
    BPE ranks its merges by frequency, so the lowest ids come first."""
    vocab = tokenizer.get_vocab()
    words = sorted(w[:-4] for w in vocab if w.endswith("</w>") and _WORD.fullmatch(w[:-4]))
    table = text_encoder.get_input_embeddings().weight.detach().float()
    norms = table[[vocab[w + "</w>"] for w in words]].norm(dim=1).numpy()
    median = float(np.median(norms))
    mad = 1.4826 * float(np.median(np.abs(norms - median))) + 1e-12
    known = [w for w, n in zip(words, norms, strict=True) if n > median + spread * mad]
    if 20 <= len(known) < 0.1 * len(words) and mad < 0.1 * median:
        return known
    return sorted(sorted(words, key=lambda w: vocab[w + "</w>"])[:limit])


@torch.no_grad()
def word_states(tokenizer, text_encoder, words: Sequence[str], batch: int = 1024) -> np.ndarray:
    """(W, d): each word's mean token state (start and end tokens left out), alone."""
    out = []
    for i in range(0, len(words), batch):
        ids = tokenizer(list(words[i:i + batch]), padding=True, truncation=True,
                        max_length=77, return_tensors="pt")
        states = text_encoder(ids.input_ids, attention_mask=ids.attention_mask
                              ).last_hidden_state.double()
        for row, mask in zip(states, ids.attention_mask.bool(), strict=True):
            tokens = row[mask][1:-1]
            out.append(tokens.mean(0).numpy() if len(tokens) else np.zeros(row.shape[-1]))
    return np.stack(out)


@dataclass
class WordView:
    """A vocabulary (words, their base text-encoder states, their shared-space embeddings) and
    the reference statistics that say which reactions stand out."""

    words: list[str]
    states: np.ndarray  # (W, d) float64
    text: np.ndarray  # (W, D) unit vectors in the embedder's space
    embedder_version: str
    mean: np.ndarray | None = None  # (W,) reaction per word over the reference LoRAs
    std: np.ndarray | None = None
    top: int = 5

    @classmethod
    def build(cls, tokenizer, text_encoder, embedder: Embedder,
              words: Sequence[str] | None = None, top: int = 5) -> WordView:
        words = list(words) if words is not None else vocabulary(tokenizer, text_encoder)
        return cls(words, word_states(tokenizer, text_encoder, words),
                   embedder.encode_texts(words).astype(np.float32), embedder.version, top=top)

    # -- per LoRA ----------------------------------------------------------------------------
    def reactions(self, lora: LoraFile) -> np.ndarray | None:
        """(W,): Σ over the UNet's cross-attention key/value modules of ‖ΔW h‖² / ‖ΔW‖²_F;
        None if the LoRA has none that read this base's text states."""
        total, found = np.zeros(len(self.words)), False
        for module in lora.modules.values():
            if module.component != "unet" or not module.path.endswith(CROSS_ATTENTION) or \
                    module.kind != "linear" or module.in_features != self.states.shape[1]:
                continue
            down = module.down.double().reshape(module.rank, -1).numpy()
            up = module.up.double().reshape(module.out_features, module.rank).numpy()
            energy = float(np.linalg.norm(up @ down)) ** 2
            if energy <= 0:
                continue
            total += (((self.states @ down.T) @ up.T) ** 2).sum(axis=1) / energy
            found = True
        return total if found else None

    def standardised(self, reactions: np.ndarray) -> np.ndarray:
        if self.mean is not None and self.std is not None:
            return (reactions - self.mean) / self.std
        gain = reactions / ((self.states ** 2).sum(axis=1) + 1e-12)
        return (gain - gain.mean()) / (gain.std() + 1e-12)

    def embed_reactions(self, reactions: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
        """Unit vector in the shared space and the words it was made of (strongest first)."""
        z = self.standardised(reactions)
        order = np.argsort(-z, kind="stable")[:self.top]
        weights = np.maximum(z[order], 0.0)
        if not weights.any():
            return None
        vector = (weights[:, None] * self.text[order]).sum(axis=0)
        return (vector / np.linalg.norm(vector)).astype(np.float32), \
            [self.words[i] for i, w in zip(order, weights, strict=True) if w > 0]

    def embed(self, lora: LoraFile) -> tuple[np.ndarray, list[str]] | None:
        reactions = self.reactions(lora)
        return None if reactions is None else self.embed_reactions(reactions)

    # -- reference ---------------------------------------------------------------------------
    def fit(self, reactions: Sequence[np.ndarray]) -> WordView:
        """Reference statistics from other LoRAs on this base (at least MIN_REFERENCE)."""
        if len(reactions) >= MIN_REFERENCE:
            stack = np.stack(reactions)
            self.mean, self.std = stack.mean(axis=0), stack.std(axis=0) + 1e-12
        else:
            self.mean = self.std = None
        return self

    # -- files -------------------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        extra = {} if self.mean is None else {"mean": self.mean, "std": self.std}
        np.savez(tmp, words=np.array(self.words), states=self.states.astype(np.float32),
                 text=self.text,
                 embedder_version=np.array(self.embedder_version), top=np.array(self.top),
                 **extra)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path, embedder_version: str) -> WordView | None:
        """The saved view, or None if it is missing or was built by another embedder."""
        if not Path(path).is_file():
            return None
        with np.load(path) as data:
            if str(data["embedder_version"]) != embedder_version:
                return None
            return cls([str(w) for w in data["words"]], data["states"].astype(np.float64),
                       data["text"],
                       embedder_version, data.get("mean"), data.get("std"), int(data["top"]))
