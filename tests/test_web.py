"""The page's wiring, fast: handlers against a fake service (tests/fake_service.py) and the
pure views; two checks through the real service on the tiny random pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app import web_views as views
from app.service import GenerateRequest, LoratlasService, ServiceConfig
from app.web import (
    MAX_STYLES,
    WebApp,
    lora_requests,
    parse_size,
    remove_slot,
    set_weight,
)
from tests.fake_service import FakeService

API_NAMES = {"generate", "retrieve", "replay", "inspect", "library_list", "style_card", "atlas",
             "recommend", "upload", "edit_style", "remove_style", "about"}


def no_progress(*_args, **_kwargs) -> None:
    pass


@pytest.fixture
def fake(tmp_path) -> FakeService:
    return FakeService(tmp_path / "fake")


@pytest.fixture
def app(fake, tmp_path) -> WebApp:
    return WebApp(fake, outputs_dir=tmp_path / "outputs")


def test_every_action_has_its_stable_api_name(app):
    demo = app.build()
    public = {d["api_name"] for d in demo.config["dependencies"]
              if d.get("api_visibility", "public") == "public"}
    assert public == API_NAMES


def test_building_the_page_does_no_service_work(app, fake):
    app.build()
    assert fake.calls == []


def test_generate_sends_a_typed_request_and_returns_images_and_recipe(app, fake):
    styles = [{"slug": "neon-night", "weight": 0.7}, "pixel-art:0.4"]
    gallery, recipe, recipe_file, gate, gate_map = app.generate(
        "a red star", styles, "merge", 3, 5, "128x128", 2, progress=no_progress)
    action, request = fake.calls[-1]
    assert action == "generate" and isinstance(request, GenerateRequest)
    assert [(x.ref, x.weight) for x in request.loras] == [("neon-night", 0.7), ("pixel-art", 0.4)]
    assert (request.width, request.height, request.num_images, request.seed) == (128, 128, 2, 5)
    assert [caption for _, caption in gallery] == ["seed 5", "seed 6"]
    assert json.loads(recipe)["prompt"] == "a red star"
    assert json.loads(Path(recipe_file).read_text()) == json.loads(recipe)
    assert gate is None and gate_map is None


def test_gated_mode_shows_the_gate_map_as_a_heatmap(app):
    *_, gate, gate_map = app.generate("a star", [{"slug": "neon-night", "weight": 1}], "gated",
                                      4, 0, "native", 1, progress=no_progress)
    assert isinstance(gate, Image.Image) and gate.width > 150
    assert np.asarray(gate_map["values"]).shape == (3, 4, 1)


def test_service_errors_become_page_errors(app):
    with pytest.raises(gr.Error, match="not in the library"):
        app.generate("a star", ["nope"], "merge", 2, 0, "native", 1, progress=no_progress)
    with pytest.raises(gr.Error, match="prompt"):
        app.generate("  ", [], "merge", 2, 0, "native", 1, progress=no_progress)
    with pytest.raises(gr.Error, match="Size"):
        parse_size("big")
    with pytest.raises(gr.Error):
        lora_requests([42])


def test_a_missing_service_action_is_a_clear_page_error(app, fake):
    fake.atlas = None
    with pytest.raises(gr.Error, match="no 'atlas'"):
        app.atlas()


def test_content_guidance_is_the_styles_own_unless_set(app, fake):
    """The checkbox (or no value, through the API) leaves it to the style's recommendation:
    None reaches the service, which resolves it (test_content_guidance.py)."""
    for value, style_default, sent in ((1.5, True, None), (None, False, None),
                                       (0, False, 0.0), (2, False, 2.0)):
        app.generate("a star", [], "merge", 2, 0, "native", 1, value, style_default,
                     progress=no_progress)
        assert fake.calls[-1][1].content_guidance == sent


def test_the_slider_shows_the_content_guidance_that_will_apply(app, fake):
    """Ticked, the slider shows the only style's recommendation (0 for a blend, or in a mode
    that cannot run it); unticked, it keeps the user's value."""
    fake.cards["pixel-art"].recommended = {"guidance_scale": 1.5, "content_guidance": 1.0}
    one, two = [{"slug": "pixel-art"}], [{"slug": "pixel-art"}, {"slug": "neon-night"}]
    for styles, mode, ticked, shown in ((one, "gated", True, 1.0), (one, "merge", True, 1.0),
                                        (one, "composite", True, 0.0), (two, "gated", True, 0.0),
                                        ([], "gated", True, 0.0),
                                        ([{"slug": "neon-night"}], "gated", True, 0.0)):
        assert app.shown_content_guidance(styles, mode, ticked).get("value") == shown, styles
    assert "value" not in app.shown_content_guidance(one, "gated", False)


def test_replay_reloads_a_recipe_png_and_fills_the_form(app, fake):
    gallery, *_ = app.generate("a green star", [{"slug": "pixel-art", "weight": 0.5}], "merge",
                               3, 9, "native", 1, 1.5, progress=no_progress)
    assert fake.calls[-1][1].content_guidance == 1.5
    png = gallery[0][0]
    out = app.replay(png)
    assert fake.calls[-1][0] == "replay"
    prompt, styles, mode, steps, seed = out[5:10]
    assert (prompt, mode, steps, seed) == ("a green star", "merge", 3, 9)
    assert out[-3:-1] == (1.5, False)  # content guidance as recorded, not the style's default
    assert out[-1] == "a green star"  # the page's own prompt: suggestions leave it alone
    assert app.retrieve_as_you_type(prompt, set_by_page=out[-1]) == (None, "")
    assert app.retrieve_as_you_type(prompt + ", neon", set_by_page=out[-1])[0] is not None
    assert styles[0]["slug"] == "pixel-art" and styles[0]["weight"] == 0.5
    with pytest.raises(gr.Error, match="not a Loratlas recipe"):
        bad = fake.folder / "x.json"
        bad.write_text("{]")
        app.replay(str(bad))


def test_generate_pressed_early_suggests_again_for_the_whole_prompt(app, fake):
    """Typed quickly, then Generate: the rows still hold what an earlier prefix suggested;
    they are suggested again for the whole prompt before the image is made."""
    early, _ = WebApp.merge_hits(app.retrieve("neon"), [], [])
    assert [s["slug"] for s in early] == ["neon-night"] and early[0]["prompt"] == "neon"
    early, dismissed = WebApp.add_style("old-photo", early, [], "Old Photo")
    settled = app.settle_suggestions("neon pixel", early, dismissed)
    assert [s["slug"] for s in settled] == ["old-photo", "neon-night", "pixel-art"]
    calls = len(fake.calls)
    assert app.settle_suggestions("neon pixel", settled, dismissed) == settled
    assert len(fake.calls) == calls  # up to date: no second search


def test_suggestions_replace_suggestions_and_keep_what_the_user_chose(app):
    hits = app.retrieve("neon pixel")
    styles, _ = WebApp.merge_hits(hits, [], [])
    assert {s["slug"] for s in styles} == {"neon-night", "pixel-art"}
    styles = set_weight(0)(styles, 1.5)
    styles, dismissed = remove_slot(1)(styles, [])
    styles, dismissed = WebApp.add_style("old-photo", styles, dismissed, "Old Photo")
    styles, note = WebApp.merge_hits(app.retrieve("neon pixel"), styles, dismissed)
    assert [(s["slug"], s["weight"]) for s in styles] == [("old-photo", 1.0),
                                                          ("neon-night", 1.5)]
    assert "pixel-art" in dismissed and note == ""
    assert WebApp.merge_hits({"prompt": "x", "hits": []}, styles, [])[1].startswith("No style")
    styles, dismissed, cleared = app.add_from_search("pixel-art", styles, dismissed)
    assert styles[-1]["name"] == "Pixel Art" and "pixel-art" not in dismissed and cleared is None
    full = [{"slug": f"s{i}", "origin": "manual"} for i in range(MAX_STYLES)]
    with pytest.raises(gr.Error, match="At most"):
        WebApp.add_style("old-photo", full, [])


def test_typing_never_raises(app, fake):
    assert app.retrieve_as_you_type("ab") == (None, "")
    fake.retrieve = None
    hits, note = app.retrieve_as_you_type("a neon star")
    assert hits is None and "unavailable" in note


def test_atlas_card_use_and_recommend(app, fake):
    atlas = app.atlas()
    page = app.render_map(atlas, app.library_list("pixel"))
    assert page.count("data-slug=") == 4 and page.count(" dim") == 3
    card = app.style_card("old-photo")
    markdown, thumbs, use, _ = app.render_card(card)
    assert "Old Photo" in markdown and len(thumbs) == 1 and use.interactive
    styles, dismissed, liked, tabs = WebApp.use_style(card, [], ["old-photo"], [])
    assert styles[0]["slug"] == "old-photo" and dismissed == [] and liked == ["old-photo"]
    assert tabs.selected == "create"
    assert "old-photo" not in [s["slug"] for s in app.recommend(liked)]
    assert app.recommend([]) == []
    other = app.style_card("sd15-ink")
    assert app.render_card(other)[2].interactive is False


def test_upload_reports_each_file(app, fake, tmp_path):
    good = tmp_path / "Ink.safetensors"
    good.write_bytes(b"{}" + b"\0" * 8)
    pickle = tmp_path / "weights.bin"
    pickle.write_bytes(b"PK\x03\x04junk")
    reports = app.upload([str(good), str(pickle)], progress=no_progress)
    rows = views.report_rows(reports)
    assert [r[:2] for r in rows] == [["Ink.safetensors", "accepted"], ["weights.bin", "refused"]]
    assert "pickle" in rows[1][3] and "safetensors" in rows[1][3]
    with pytest.raises(gr.Error):
        app.upload([], progress=no_progress)


def test_edit_and_remove(app, fake):
    card = app.edit_style("old-photo", name="Sepia", tags="old, film ", description="")
    assert card["name"] == "Sepia" and card["tags"] == ["old", "film"]
    assert ("edit_style", ("old-photo", "Sepia", ["old", "film"], None)) in fake.calls
    assert app.remove_style("old-photo") == {"removed": "old-photo"}
    with pytest.raises(gr.Error, match="no style"):
        app.style_card("old-photo")


def test_gate_heatmap_accepts_both_layouts():
    layered = {"layers": ["a", "b"], "loras": ["x", "y"], "values": np.ones((2, 5, 2)).tolist()}
    nested = {"x": {"a": [0, 1, 2], "b": [1, 1, 1]}, "y": {"a": [0, 0, 0], "b": [2, 2, 2]}}
    assert views.gate_array(nested)[0].shape == (2, 3, 2)
    for gate_map in (layered, nested):
        image = views.gate_heatmap(gate_map)
        assert image.width > 150 and image.height > 20
    assert views.gate_heatmap({"values": [1, 2]}) is None and views.gate_heatmap(None) is None


def test_gate_heatmap_greys_the_blocks_a_lora_has_no_layers_in():
    """A decoder-only LoRA (as some starter files are) has no down blocks: its map shows them
    gray, not "gate 0", and the block rows average only the layers each LoRA has."""
    layers = [f"unet.down_blocks.0.attn{i}" for i in range(13)] + \
        [f"unet.up_blocks.0.attn{i}" for i in range(13)]  # over MAX_ROWS: rows per block
    values = np.full((26, 4, 2), 0.5)
    values[:13, :, 1] = 0.0  # as the engine writes a LoRA's missing modules
    values[13, :, 0] = 0.0  # one up-block layer the first LoRA lacks
    present = np.ones((26, 2), dtype=bool)
    present[:13, 1] = present[13, 0] = False
    gate_map = {"layers": layers, "loras": ["full", "decoder"], "values": values.tolist(),
                "present": present.tolist()}
    array, names, _ = views.gate_array(gate_map)
    rows, names = views.by_block(array, names)
    assert names == ["down_blocks.0 (13)", "up_blocks.0 (13)"]
    assert np.isnan(rows[0, :, 1]).all() and np.allclose(rows[1, :, 1], 0.5)
    assert np.allclose(rows[1, :, 0], 0.5)  # its missing layer is not counted as a 0
    image = np.asarray(views.gate_heatmap(gate_map))
    without = np.asarray(views.gate_heatmap({k: v for k, v in gate_map.items()
                                             if k != "present"}))
    gray = [np.all(im == views.ABSENT, axis=-1).sum() for im in (image, without)]
    assert gray[0] > gray[1] + 1000, gray  # the decoder LoRA's down-block row (text aside)


# -- the same handlers through the real service on the tiny random pipeline -----------------
@pytest.fixture(scope="module")
def real(tiny_pipeline_dir, tmp_path_factory) -> WebApp:
    """No styles here, so the library stays closed and these tests stay fast (styles: e2e)."""
    folder = tmp_path_factory.mktemp("real")
    service = LoratlasService(ServiceConfig(base_model=str(tiny_pipeline_dir),
                                            library=str(folder / "library"), device="cpu"))
    return WebApp(service, outputs_dir=folder / "outputs")


def test_real_generate_writes_pngs_that_replay_identically(real):
    gallery, recipe, *_ = real.generate("a red star", [], "merge", 2, 3, "native", 2,
                                        progress=no_progress)
    assert json.loads(recipe)["seed"] == 3 and len(gallery) == 2
    second = np.asarray(Image.open(gallery[1][0]))
    again = real.replay(gallery[1][0])
    assert np.array_equal(second, np.asarray(Image.open(again[0][0][0])))
    assert again[9] == 4  # the PNG's own seed fills the form


def test_files_are_never_named_by_path(real, tmp_path):
    with pytest.raises(gr.Error, match="slug"):
        real.generate("a star", [{"slug": "/etc/passwd"}], "merge", 2, 0, "native", 1,
                      progress=no_progress)
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"prompt": "x", "base_model": "b", "base_family": "sd1",
                                  "loras": [{"ref": "../x.safetensors", "sha256": "0"}]}))
    with pytest.raises(gr.Error, match="slug"):
        real.replay(str(recipe))


def test_real_inspect_refuses_a_pickle(real, tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x80\x04junk")
    assert real.inspect(str(bad))["errors"][0]["code"] == "pickle"


def test_atlas_map_inlines_thumbnails_and_marks_other_families(fake):
    page = views.atlas_html(fake.atlas().to_json())
    assert page.count("data:image/png;base64,") == 3  # the SD 1.5 style has no thumbnail
    assert "pt other" in page and "not for this base model" in page
    assert "atlas-empty" in views.atlas_html({"points": [], "clusters": []})


def test_report_rows_explain_duplicates():
    rows = views.report_rows([{"file": "a.safetensors", "ok": True, "slug": None,
                               "duplicate_of": "ink"},
                              {"file": "b.safetensors", "ok": True, "slug": "b",
                               "near_duplicate_of": "ink"}])
    assert rows[0][1] == "duplicate" and "ink" in rows[0][3]
    assert rows[1][1] == "accepted" and "near-duplicate" in rows[1][3]


def test_report_rows_carry_the_note_of_an_accepted_file():
    rows = views.report_rows([{"file": "xl.safetensors", "ok": True, "slug": "xl",
                               "note": "not on the map: it is for sdxl"}])
    assert rows[0][1] == "accepted" and rows[0][3] == "not on the map: it is for sdxl"


def test_atlas_writes_no_label_over_another():
    points = [{"slug": s, "name": n, "x": x, "y": y, "cluster": 0}
              for s, n, x, y in [("a", "Alpha", 0.0, 0.0), ("b", "Beta", 0.01, 0.0),
                                 ("c", "lora_0123456789", 0.02, 0.01), ("d", "Delta", 1.0, 1.0),
                                 ("e", "Echo", 0.5, 0.5)]]
    page = views.atlas_html({"points": points, "clusters": [{"id": 0, "label": "x", "size": 5}]})
    written = re.findall(r"<span class='label'[^>]*>([^<]*)</span>", page)
    # the three near (0, 0) would overlap each other: one name is written there; the far
    # ones all are
    assert {"Delta", "Echo"} <= set(written) and len(written) == 3
    assert len(set(written) & {"Alpha", "Beta", "lora_0123456789"}) == 1
    assert all(f"aria-label='{p['name']}'" in page for p in points)  # every name stays reachable


def test_reasons_line_names_clause_views_words_and_what_the_weights_react_to():
    line = views.reasons_text({"clause": "a neon sign", "views": {"probes": 0.1, "words": 0.7},
                               "matched_words": [], "weights_react_to": ["buzzing", "neon"]})
    assert line == ("matches “a neon sign”; by words 0.70, probes 0.10; "
                    "its weights react to: buzzing, neon")
    assert views.reasons_text(None) == "" and views.reasons_text("from the recipe") == \
        "from the recipe"
