"""The starter build's pieces on tiny budgets, and the shipped pack when it is present."""

from __future__ import annotations

import json

import pytest
import torch

from fusion.base import load_base
from styles.reader import ReadOptions, read_lora
from styles.starter import base_model
from styles.starter.looks import STYLES
from styles.starter.paths import PIPELINE_DIR, starter_available, starter_loras
from styles.starter.style_loras import (
    TARGETS,
    extract_modules,
    file_name,
    layout_of,
    save_style_lora,
    train_style_lora,
)


def test_layouts_cover_kohya_diffusers_and_a_quarter_sparse():
    layouts = [layout_of(slug) for slug in STYLES]
    assert layouts.count("sparse") == 7 and layouts.count("diffusers") >= 3
    assert layouts.count("kohya") > len(layouts) / 2
    sparse = [s for s in STYLES if layout_of(s) == "sparse"]
    assert all(s not in file_name(s) for s in sparse)


def test_vae_training_resumes_from_its_checkpoint(tmp_path):
    base_model.train_vae(tmp_path, steps=1, batch=2)
    state = torch.load(tmp_path / "vae.pt", weights_only=True)
    assert state["step"] == 1
    vae = base_model.train_vae(tmp_path, steps=2, batch=2)
    assert torch.load(tmp_path / "vae.pt", weights_only=True)["step"] == 2
    assert vae.config.scaling_factor > 0


def test_style_lora_trains_and_saves_in_each_layout(tiny_pipeline_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    modules = train_style_lora(pipe, "sepia", steps=2, batch=2, pool=4, rank=2)
    assert modules and {m.kind for m in modules} == {"linear", "conv"}
    table = load_base(tiny_pipeline_dir, device="cpu").table
    kinds = {}
    for slug in ("sepia", "blueprint", sorted(STYLES)[3]):
        path = save_style_lora(modules, tmp_path, slug, 2, 2)
        lora = read_lora(path, ReadOptions(base_table=table))
        kinds[layout_of(slug)] = (lora.format, lora.metadata.name)
        assert len(lora.modules) == len(modules)
        target = modules[0].target
        assert torch.allclose(lora.modules[target].delta(), modules[0].delta(), atol=1e-2)
    assert kinds["kohya"] == ("kohya", "Sepia")
    assert kinds["sparse"] == ("kohya", None)


def test_extract_modules_reads_peft_layers():
    from peft import LoraConfig, inject_adapter_in_model

    model = torch.nn.Sequential()
    model.add_module("to_q", torch.nn.Linear(4, 4))
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS), model)
    (module,) = extract_modules(model)
    assert module.target == "unet.to_q" and module.scale == 2.0 and module.rank == 2


shipped = pytest.mark.skipif(not starter_available(), reason="starter pack not built")


@shipped
def test_shipped_pipeline_loads_with_diffusers_and_is_the_starter_family():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(PIPELINE_DIR)
    assert pipe.tokenizer("a red star").input_ids == [49406, 320, 736, 1565, 49407]
    assert load_base(PIPELINE_DIR, device="cpu").family == "starter"


@pytest.mark.skipif(not starter_loras(), reason="starter LoRAs not built")
def test_shipped_loras_are_the_28_styles_and_read_as_starter_loras():
    files = starter_loras()
    assert set(files) == set(STYLES)
    formats = {}
    for slug, path in files.items():
        lora = read_lora(path)
        assert lora.family == "starter", slug
        formats[layout_of(slug)] = lora.format
        if layout_of(slug) == "sparse":
            assert not lora.metadata.tags and lora.metadata.name is None
        else:
            assert lora.metadata.name == STYLES[slug].name
    assert formats == {"kohya": "kohya", "diffusers": "diffusers-peft", "sparse": "kohya"}
    manifest = json.loads((PIPELINE_DIR.parent / "manifest.json").read_text())
    assert len(manifest["styles"]) == 28
