"""The minimal page: it builds, and its handlers go through the real service."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from app.service import LoratlasService, ServiceConfig
from app.web import WebApp
from styles.writers import save_kohya
from tests.conftest import random_lora


@pytest.fixture(scope="module")
def web(tiny_pipeline_dir, tiny_base, tmp_path_factory) -> WebApp:
    library = tmp_path_factory.mktemp("library")
    save_kohya(random_lora(tiny_base.table, seed=5), library / "ink.safetensors")
    return WebApp(LoratlasService(ServiceConfig(base_model=str(tiny_pipeline_dir),
                                                library=str(library), device="cpu")))


def test_page_builds_with_the_library(web):
    assert isinstance(web.build(), gr.Blocks)
    assert list(web.service.library_files()) == ["ink"]


def test_generate_handler(web):
    images, recipe = web.generate("a red star", ["ink"], 0.7, 2, 3, 1,
                                  progress=lambda *a, **k: None)
    assert len(images) == 1
    assert json.loads(recipe)["loras"][0]["weight"] == 0.7


def test_handlers_turn_service_errors_into_page_errors(web, tmp_path):
    with pytest.raises(gr.Error):
        web.generate("  ", [], 1.0, 2, 0, 1, progress=lambda *a, **k: None)
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x80\x04junk")
    assert web.inspect(str(bad))["errors"][0]["code"] == "pickle"
