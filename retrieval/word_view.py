"""A training-free weights view: the words a LoRA's cross-attention reacts to, in the text space.

A LoRA's cross-attention key and value deltas ΔW (text hidden size → attention width) change
the attention most for the text states h with a large ‖ΔW h‖². Scored over a vocabulary (for
each word, how it moves the base text encoder's states of a few neutral prompts: see
`word_states`), that says which words the LoRA reacts to; the LoRA's vector is the mean text
embedding (open_clip, the shared space) of its top words, weighted by how far each stands out.
Nothing is trained, so a LoRA of a style never seen before is placed as well as any other: it
is what the learned weights encoder cannot do (`benchmarks/results/retrieval_quality.md`).

How far a word "stands out" is measured against a reference set of LoRAs on the same base
(each word's mean and spread of reactions over them), which removes the directions every LoRA
moves. Without a reference (fewer than `MIN_REFERENCE` LoRAs), a word's reaction is divided by
its own energy ‖h‖² (how a random delta would react) and standardised over the vocabulary.

The vocabulary is the tokenizer's whole-word tokens that the text encoder has learned: when
most of the vocabulary is untouched by training (the starter pack's encoder learned a few
hundred words), only the words whose input embedding stands out of the bulk by norm are kept.
"""

from __future__ import annotations

import hashlib
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
PADDING_READ = 4  # padding positions encoded past the longest prompt (see `word_states`)
# a saved view read another way (its words' states, or its reference statistics: "mean" of
# modules' reactions since reactions are averaged, not summed) is rebuilt
STATES_METHOD = f"in-context-1-pad{PADDING_READ}-mean"
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
    table = text_encoder.get_input_embeddings().weight.detach().float().cpu()
    norms = table[[vocab[w + "</w>"] for w in words]].norm(dim=1).numpy()
    median = float(np.median(norms))
    mad = 1.4826 * float(np.median(np.abs(norms - median))) + 1e-12
    known = [w for w, n in zip(words, norms, strict=True) if n > median + spread * mad]
    if 20 <= len(known) < 0.1 * len(words) and mad < 0.1 * median:
        return known
    return sorted(sorted(words, key=lambda w: vocab[w + "</w>"])[:limit])


@torch.no_grad()
def word_states(tokenizer, text_encoder, words: Sequence[str], templates: Sequence[str],
                batch: int = 256) -> np.ndarray:
    """(W, d): the direction in which each word moves the text states the UNet reads.

    A LoRA learns its cross-attention deltas from the states of whole prompts, padded as a
    pipeline pads them, and most of those positions are the end and padding tokens, which carry
    the sentence. So a word is read in context: for each neutral `template`, the states of
    "template, word" minus those of the template alone, at every position from the word on
    (earlier ones do not change: the encoder is causal). Over all templates' positions, the
    principal direction scaled by its singular value is the word's state (the reaction
    ‖ΔW h‖² then measures how strongly a delta reads what the word adds).

    Only `PADDING_READ` padding positions past the longest prompt of a batch are encoded; the
    last of them stands for the rest with weight √(count) (the same token attending to the same
    words; the states drift slowly with position). On the starter encoder the direction is
    within cosine 0.94 (mean; 0.66 at worst) of the one from all 77 positions
    (tests/test_word_view.py); encoding 16 instead brings that to 0.99 but doubles the cost
    (23 minutes on two CPU cores for an SD-size encoder and 8000 words, instead of 10) for the
    same retrieval (Recall@3 on unseen starter LoRAs 0.667 against 0.661, a difference of one
    prompt in 168)."""
    full = min(int(tokenizer.model_max_length),
               int(text_encoder.config.max_position_embeddings))
    templates = list(templates)

    def encode(texts: list[str], length: int) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                        return_tensors="pt").input_ids.to(text_encoder.device)
        return text_encoder(ids).last_hidden_state.double().cpu()

    alone = encode(templates, full)  # (T, full, d)
    out = []
    for i in range(0, len(words), batch):
        texts = [f"{t}, {w}" for t in templates for w in words[i:i + batch]]
        longest = max(len(x) for x in tokenizer(texts).input_ids)
        length = min(full, longest + PADDING_READ)
        states = encode(texts, length).reshape(len(templates), -1, length, alone.shape[-1])
        diff = states - alone[:, None, :length]  # (T, B, length, d)
        tail = (full - length) ** 0.5
        if tail:
            diff = torch.cat([diff, tail * diff[:, :, -1:]], dim=2)
        rows = diff.permute(1, 0, 2, 3).reshape(diff.shape[1], -1, diff.shape[-1])
        _, values, vectors = torch.linalg.svd(rows, full_matrices=False)
        out.append((values[:, :1, None] * vectors[:, :1]).squeeze(1).numpy())
    return np.concatenate(out)


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
    def build(cls, tokenizer, text_encoder, embedder: Embedder, templates: Sequence[str],
              words: Sequence[str] | None = None, top: int = 5) -> WordView:
        """`templates`: a few neutral prompts of the base (the probe prompts) that each word is
        read after (see `word_states`)."""
        words = list(words) if words is not None else vocabulary(tokenizer, text_encoder)
        return cls(words, word_states(tokenizer, text_encoder, words, templates),
                   embedder.encode_texts(words).astype(np.float32), embedder.version, top=top)

    # -- per LoRA ----------------------------------------------------------------------------
    def reactions(self, lora: LoraFile) -> np.ndarray | None:
        """(W,): the mean over the UNet's cross-attention key/value modules of
        ‖ΔW h‖² / ‖ΔW‖²_F; None if the LoRA has none that read this base's text states.

        A mean, not a sum, so a LoRA on some blocks only (the decoder, as B-LoRA-style files
        and some starter candidates are) reacts as strongly as one on every block: summed, its
        reactions were about half the reference LoRAs' for every word, and then no word stood
        out (a decoder-only stained-glass candidate got no words at all)."""
        total, found = np.zeros(len(self.words)), 0
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
            found += 1
        return total / found if found else None

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

    @property
    def digest(self) -> str:
        """Names this view as fitted: a library re-derives the vectors it stored from another."""
        h = hashlib.sha256("\n".join(self.words).encode())
        for array in (self.states, self.text, self.mean, self.std):
            if array is not None:
                h.update(np.ascontiguousarray(array, np.float32).tobytes())
        h.update(f"{self.top}:{STATES_METHOD}".encode())
        return h.hexdigest()[:16]

    # -- files -------------------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        extra = {} if self.mean is None else {"mean": self.mean, "std": self.std}
        np.savez(tmp, words=np.array(self.words), states=self.states.astype(np.float32),
                 text=self.text,
                 embedder_version=np.array(self.embedder_version), top=np.array(self.top),
                 method=np.array(STATES_METHOD),
                 **extra)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path, embedder_version: str) -> WordView | None:
        """The saved view, or None if it is missing, was built by another embedder or read its
        words another way (`STATES_METHOD`)."""
        if not Path(path).is_file():
            return None
        with np.load(path) as data:
            if str(data["embedder_version"]) != embedder_version or \
                    str(data.get("method", "")) != STATES_METHOD:
                return None
            return cls([str(w) for w in data["words"]], data["states"].astype(np.float64),
                       data["text"],
                       embedder_version, data.get("mean"), data.get("std"), int(data["top"]))
