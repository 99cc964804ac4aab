"""The words view: the words a LoRA's cross-attention reacts to, read from its weights alone,
on the real starter text encoder and embedder, the shipped LoRAs, and a real upload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.word_view import STATES_METHOD, WordView, vocabulary, word_states
from styles.lora import LoraFile, LoraMetadata, LoraModule
from styles.starter.paths import CLIP_DIR, PIPELINE_DIR, starter_available, starter_loras

starter = pytest.mark.skipif(
    not starter_available() or not (CLIP_DIR / "open_clip_model.safetensors").is_file(),
    reason="starter pack not built")


def _lora(modules: list[LoraModule]) -> LoraFile:
    return LoraFile(Path("x.safetensors"), "0" * 64, "kohya", "starter",
                    {m.target: m for m in modules}, LoraMetadata(), "F32", None)


@pytest.fixture(scope="module")
def text_side():
    from transformers import CLIPTextModel, CLIPTokenizer

    return (CLIPTokenizer.from_pretrained(PIPELINE_DIR / "tokenizer"),
            CLIPTextModel.from_pretrained(PIPELINE_DIR / "text_encoder").eval())


@pytest.fixture(scope="module")
def view(text_side):
    from app.library import PROBE_PROMPTS
    from retrieval.embedders import starter_embedder

    return WordView.build(*text_side, starter_embedder(), PROBE_PROMPTS)


@starter
def test_vocabulary_is_the_words_the_starter_encoder_learned(text_side):
    words = vocabulary(*text_side)
    assert 100 < len(words) < 2000
    assert {"neon", "pixels", "chalk", "star", "red"} <= set(words)
    assert "mortgages" not in words  # in CLIP's vocabulary, never in a starter caption


@starter
def test_a_trained_vocabulary_keeps_its_most_frequent_words(text_side):
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, trained = text_side
    torch.manual_seed(0)
    other = CLIPTextModel(CLIPTextConfig(**{**trained.config.to_dict(), "num_hidden_layers": 1}))
    with torch.no_grad():  # norms spread widely, as in a fully trained embedding table
        table = other.get_input_embeddings().weight
        table.mul_(torch.rand(table.shape[0], 1) * 3)
    words = vocabulary(tokenizer, other, limit=50)
    assert len(words) == 50 and {"the", "and"} <= set(words)


@starter
def test_a_lora_reacting_to_one_word_is_placed_at_that_word(view):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(PIPELINE_DIR / "unet")
    neon = view.states[view.words.index("neon")]
    g = torch.Generator().manual_seed(0)
    modules = [LoraModule(f"unet.{path}", "linear",
                          torch.from_numpy(neon / np.linalg.norm(neon)).float()[None],
                          torch.randn(module.out_features, 1, generator=g))
               for path, module in unet.named_modules() if path.endswith("attn2.to_k")]
    assert modules
    vector, words = view.embed(_lora(modules))
    assert words[0] == "neon" and len(words) <= view.top
    similarity = view.text @ vector
    assert similarity[view.words.index("neon")] > np.median(similarity) + 0.2
    assert np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)


@starter
def test_a_word_is_read_as_what_it_adds_to_a_whole_padded_prompt(text_side):
    """Against every position encoded at full length, as the pipeline pads a prompt: the
    padding past the longest prompt is not encoded but stood for by its last row."""
    tokenizer, encoder = text_side
    words, templates = vocabulary(tokenizer, encoder)[:60], ["a red circle", "a blue square"]
    states = word_states(tokenizer, encoder, words, templates)
    with torch.no_grad():
        def full(texts):
            ids = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")
            return encoder(ids.input_ids).last_hidden_state.double()
        diffs = torch.cat([full([f"{t}, {w}" for w in words]) - full([t]) for t in templates],
                          dim=1)
    top = torch.linalg.svd(diffs, full_matrices=False)
    exact = (top.S[:, :1, None] * top.Vh[:, :1]).squeeze(1).numpy()
    cosine = np.abs((states * exact).sum(1)) / np.linalg.norm(states, axis=1) / \
        np.linalg.norm(exact, axis=1)
    assert cosine.mean() > 0.92 and cosine.min() > 0.6, (cosine.mean(), cosine.min())
    # (the norm matters not: every word's reactions are standardised on their own)
    assert not np.allclose(states[0], states[1])


@starter
def test_no_cross_attention_keys_means_no_words(view):
    conv = LoraModule("unet.down_blocks.0.resnets.0.conv1", "conv", torch.randn(2, 64, 3, 3),
                      torch.randn(64, 2, 1, 1))
    assert view.reactions(_lora([conv])) is None and view.embed(_lora([conv])) is None


@starter
def test_reference_statistics_and_files_round_trip(view, tmp_path):
    g = np.random.default_rng(0)
    reactions = [g.random(len(view.words)) for _ in range(6)]
    fitted = view.fit(reactions[:5])
    assert fitted.mean is not None and fitted.std is not None
    path = fitted.save(tmp_path / "words.npz")
    again = WordView.load(path, view.embedder_version)
    assert again.words == view.words and np.allclose(again.mean, view.mean)
    assert again.embed_reactions(reactions[5])[1] == view.embed_reactions(reactions[5])[1]
    assert WordView.load(path, "another-embedder") is None
    with np.load(path) as data:  # words read another way (an older release): rebuilt
        np.savez(tmp_path / "old.npz", **{**data, "method": np.array("alone-0")})
    assert STATES_METHOD != "alone-0" and WordView.load(tmp_path / "old.npz",
                                                        view.embedder_version) is None
    assert view.fit(reactions[:2]).mean is None  # too few to say what is usual


@pytest.mark.skipif(not starter_available() or not starter_loras(),
                    reason="starter LoRAs not built")
def test_shipped_neon_night_reacts_to_its_own_words_and_an_unseen_upload_gets_the_words_view(
        tmp_path, monkeypatch):
    """A starter LoRA keeps the encoder's weights view (it was trained on it); the same file
    with its weights changed is unseen: it is indexed with its words, which explain hits."""
    from safetensors.torch import load_file, save_file

    from app.service import LoratlasService, ServiceConfig

    monkeypatch.setenv("LORATLAS_HOME", str(tmp_path / "home"))
    service = LoratlasService(ServiceConfig(device="cpu"))
    library = service.library
    assert library.retriever.vector("weights", "neon-night") is not None
    assert library.retriever.vector("words", "neon-night") is None
    import re

    from styles.starter.looks import STYLES

    spec = STYLES["neon-night"]  # mostly words of its own card and captions
    own = set(re.findall(r"[a-z]+", " ".join([spec.name.lower(), spec.description, *spec.phrases])))
    words = library.catalog.get("neon-night").extra["weight_words"]
    assert len(set(words) & own) >= 3, words
    card = service.style_card("neon-night")  # the atlas card says it too
    assert card.weight_words == words
    from app.web_views import card_markdown

    assert "Its weights react to: " in card_markdown(card.to_json())

    g = torch.Generator().manual_seed(1)
    tensors = {k: v.float() * (1 + 0.5 * torch.randn(v.shape, generator=g))
               if k.endswith(("lora_down.weight", "lora_up.weight")) else v
               for k, v in load_file(starter_loras()["neon-night"]).items()}
    upload = tmp_path / "a1b2c3d4e5.safetensors"
    save_file(tensors, str(upload))  # no metadata: no name, tags or trigger
    entry = library.ingest(upload, "upload", upload.name).entry
    assert library.retriever.vector("words", entry.id) is not None
    assert library.retriever.vector("weights", entry.id) is None
    assert library.retriever.records[entry.id].weight_words == entry.extra["weight_words"]
    # found without a name, and the reasons say which words its weights react to (the
    # original is taken out first: of two near-duplicates only one is ever shown)
    library.retriever.remove_style("neon-night")
    hits = library.retriever.retrieve("a star glowing like a neon sign at night", k=3)
    assert hits and hits[0].slug == entry.id  # the best hit (others may pass the threshold)
    assert hits[0].reasons["weights_react_to"] == entry.extra["weight_words"]


def test_any_base_gets_a_words_view_built_once_into_the_shared_cache(tiny_pipeline_dir,
                                                                        tiny_base, tmp_path):
    """A user's own base (here a tiny random one): no trained encoder, so an upload is found
    by its words; the view is built from that base's text encoder once, then reused."""
    from app.service import LoratlasService, ServiceConfig
    from styles.writers import save_kohya
    from tests.conftest import random_lora

    def open_library(name: str):
        return LoratlasService(ServiceConfig(base_model=str(tiny_pipeline_dir), device="cpu",
                                             library=str(tmp_path / name))).library

    library = open_library("one")
    cached = list((LoratlasService.cache_dir() / "word_view").glob("*.npz"))
    assert cached and library.parts.word_view is not None
    stamp = {p: p.stat().st_mtime_ns for p in cached}
    assert open_library("two").parts.word_view.words == library.parts.word_view.words
    assert {p: p.stat().st_mtime_ns for p in cached} == stamp  # loaded, not rebuilt

    path = save_kohya(random_lora(tiny_base.table, seed=5), tmp_path / "ink.safetensors")
    entry = library.ingest(path, "upload", path.name).entry
    assert library.retriever.vector("words", entry.id) is not None
    assert library.retriever.vector("weights", entry.id) is None
    assert entry.extra["weight_words"] and library.style_vector(entry.id) is not None

    # a library indexed before the words view existed gets it on the next open, once
    kept = {view: v for view in library.retriever.indexes if view != "words"
            and (v := library.retriever.vector(view, entry.id)) is not None}
    library.retriever.add_style(library.retriever.records[entry.id], kept)
    library._save_indexes()
    assert library.retriever.vector("words", entry.id) is None
    library.catalog.update(entry.id, extra={k: v for k, v in entry.extra.items()
                                            if k not in ("weight_words", "weight_views_by")})
    again = open_library("one")
    right = again.retriever.vector("words", entry.id)
    assert right is not None
    assert again.catalog.get(entry.id).extra["weight_words"] == entry.extra["weight_words"]
    assert again.catalog.get(entry.id).extra["weight_views_by"] == \
        again.parts.weight_views_id

    # vectors read with another encoder or words view (an updated starter pack retrains
    # both) are read again on the next open
    stale = np.roll(right, 1)
    again.retriever.add_style(again.retriever.records[entry.id], {**kept, "words": stale})
    again._save_indexes()
    again.catalog.update(entry.id, extra={**again.catalog.get(entry.id).extra,
                                          "weight_views_by": "an-older-encoder:and-view"})
    third = open_library("one")
    assert np.allclose(third.retriever.vector("words", entry.id), right, atol=1e-6)
    assert third.catalog.get(entry.id).extra["weight_views_by"] == third.parts.weight_views_id
    # and only once: a fourth open finds nothing to read again
    assert open_library("one").catalog.get(entry.id).extra == \
        third.catalog.get(entry.id).extra


@pytest.fixture(scope="module")
def shipped(view) -> tuple[dict[str, LoraFile], list[np.ndarray]]:
    """The shipped starter LoRAs, read once, and their reactions (to fit `view` on)."""
    from styles.reader import read_lora

    loras = {slug: read_lora(path) for slug, path in starter_loras().items()}
    return loras, [view.reactions(lora) for lora in loras.values()]


@starter
@pytest.mark.skipif(not starter_loras(), reason="starter LoRAs not built")
def test_a_lora_on_the_decoder_only_reacts_as_strongly_as_one_on_every_block(view, shipped):
    """Reactions are averaged over the modules, so a LoRA with only its up blocks (as B-LoRA-
    style files, and the starter's block-profile candidates in lora_strength_blocks.md, are)
    is read on the same scale as the others; summed, its reactions were about half theirs for
    every word, and the decoder-only stained-glass candidate got no words at all."""
    loras, reactions = shipped
    view.fit(reactions)
    assert all(view.embed(lora) is not None for lora in loras.values())
    full = loras["neon-night"]  # on every block
    assert any(m.path.startswith("down_blocks.") for m in full.modules.values())
    decoder = _lora([m for m in full.modules.values() if m.path.startswith("up_blocks.")])
    ratio = view.reactions(decoder).mean() / view.reactions(full).mean()
    assert 0.7 < ratio < 1.4, ratio
    assert view.embed(decoder) is not None


@starter
@pytest.mark.skipif(not starter_loras(), reason="starter LoRAs not built")
def test_the_shipped_decoder_only_files_keep_their_words_where_stained_glass_would_not(view,
                                                                                       shipped):
    """Why `benchmarks/lora_strength.py` walks a block profile only if the words view ranks the
    style no lower than the all-blocks file: glitch's and halftone's up blocks hold their style
    words, so they ship decoder-only; stained-glass's down blocks hold "glass" and "stained",
    and its decoder-only file (which met both image targets on the validation prompts) would
    be read as another style."""
    from styles.starter.style_loras import with_blocks

    loras, reactions = shipped
    view.fit(reactions)
    for slug, word in (("glitch", "glitch"), ("halftone", "newspaper")):
        assert not any(m.path.startswith(("down_blocks.", "mid_block."))
                       for m in loras[slug].modules.values())
        assert word in view.embed(loras[slug])[1], (slug, view.embed(loras[slug])[1])
    stained = list(loras["stained-glass"].modules.values())
    own = {"glass", "stained"}
    assert own & set(view.embed(_lora(stained))[1])
    assert not own & set(view.embed(_lora(with_blocks(stained, "decoder")))[1])
