"""SDXL, the second family: the same engine on a tiny two-text-encoder pipeline."""

from __future__ import annotations

import numpy as np

from fusion.base import load_base
from fusion.engine import GenerationEngine, LoraUse
from styles.reader import ReadOptions, read_lora
from styles.writers import save_kohya
from tests.conftest import random_lora


def test_sdxl_pipeline_loads_and_applies_unet_and_both_text_encoder_loras(tiny_xl_pipeline_dir,
                                                                         tmp_path):
    base = load_base(tiny_xl_pipeline_dir, device="cpu")
    assert base.family == "sdxl"
    assert any(t.startswith("text_encoder_2.") for t in base.table.order)
    te2 = [t for t in base.table.order if t.startswith("text_encoder_2.") and "q_proj" in t]
    te1 = [t for t in base.table.order if t.startswith("text_encoder.") and "v_proj" in t]
    modules = random_lora(base.table, seed=1) + random_lora(base.table, te1 + te2, seed=2)
    path = save_kohya(modules, tmp_path / "xl.safetensors",
                      {"ss_base_model_version": "sdxl_base_v1-0"})
    lora = read_lora(path, ReadOptions(base_table=base.table))
    assert lora.family == "sdxl" and lora.format == "kohya"
    assert {"unet", "text_encoder", "text_encoder_2"} == set(lora.components)
    engine = GenerationEngine(base)

    def run(uses):
        recipe = engine.recipe_for("a red star", uses, steps=2, width=64, height=64, seed=3)
        return np.asarray(engine.generate(recipe, uses).images[0], dtype=np.float32)

    plain = run([])
    styled = run([LoraUse(lora, "xl", 1.0)])
    assert np.abs(plain - styled).mean() > 0.5
    # weight 0 is the base image; on SDXL the injected PEFT layers change the float order of a
    # few ops, which can move a pixel by one 8-bit level (seen with 1 torch thread)
    assert np.abs(plain - run([LoraUse(lora, "xl", 0.0)])).max() <= 1.0
