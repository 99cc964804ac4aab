"""The real CLIP BPE tokenizer, built offline from the vocabulary open-clip-torch ships."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

MERGES_COUNT = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_clip_tokenizer_files(folder: str | Path) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json that CLIPTokenizer reads.

    The ids match Stable Diffusion's tokenizer: 49408 tokens, <|startoftext|> 49406,
    <|endoftext|> 49407.
    """
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(open_clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = lines[1: MERGES_COUNT + 1]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "do_lower_case": True}))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    return folder


@lru_cache(maxsize=2)
def clip_tokenizer(folder: str):
    """A transformers CLIPTokenizer from files written by `write_clip_tokenizer_files`."""
    from transformers import CLIPTokenizer

    path = Path(folder)
    if not (path / "vocab.json").is_file():
        write_clip_tokenizer_files(path)
    return CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)


def compact_tokenizer_folder(folder: str | Path) -> bool:
    """Rewrite a CLIP tokenizer folder that holds transformers' tokenizer.json (3.6 MB) as the
    vocab.json and merges.txt CLIPTokenizer also reads (1.5 MB; the same ids). The new folder
    replaces the old one whole. False if there was no tokenizer.json."""
    import shutil

    folder = Path(folder)
    tmp, old = (folder.with_name(folder.name + suffix) for suffix in (".tmp", ".old"))
    if not folder.exists() and old.is_dir():  # stopped between the two renames below
        old.rename(folder)
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    if not (folder / "tokenizer.json").is_file():
        return False
    write_clip_tokenizer_files(tmp)
    folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old)
    return True

