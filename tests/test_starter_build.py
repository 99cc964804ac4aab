"""The starter build's pieces on tiny budgets, and the shipped pack when it is present."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fusion.base import load_base
from styles.reader import ReadOptions, read_lora
from styles.starter import base_model
from styles.starter.looks import STYLES
from styles.starter.paths import (
    MODEL_CARD,
    PIPELINE_DIR,
    starter_available,
    starter_loras,
    starter_recommendations,
)
from styles.starter.style_loras import (
    TARGETS,
    change_weights,
    extract_modules,
    file_name,
    layout_of,
    save_style_lora,
    shape_word_loss,
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


def test_zero_snr_schedule_leaves_no_signal_at_the_last_step_and_targets_velocity():
    from diffusers import DDPMScheduler

    old, new = DDPMScheduler(**base_model.NOISE), DDPMScheduler(**base_model.SCHEDULE)
    assert old.alphas_cumprod[-1] > 4e-3  # SD's schedule: the image leaks into x_T
    assert new.alphas_cumprod[-1] < 1e-6
    x0, eps = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    t = torch.tensor([0, 999])
    assert torch.equal(base_model.diffusion_target(old, x0, eps, t), eps)
    v = base_model.diffusion_target(new, x0, eps, t)
    assert torch.allclose(v[1], -x0[1], atol=1e-3)  # at zero SNR, v is minus the image
    assert torch.allclose(v[0], eps[0], atol=0.15)  # at the first step, v is about the noise
    new.register_to_config(prediction_type="sample")
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        base_model.diffusion_target(new, x0, eps, t)


def test_unet_training_starts_from_a_given_unet_and_resumes(tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from styles.tokenizer import clip_tokenizer, write_clip_tokenizer_files

    vae = base_model.train_vae(tmp_path, steps=1, batch=2)
    tokenizer = clip_tokenizer(str(write_clip_tokenizer_files(tmp_path / "tok")))
    text_encoder = CLIPTextModel(CLIPTextConfig(**base_model.TEXT_CONFIG)).eval()
    torch.manual_seed(3)
    start = UNet2DConditionModel(**base_model.UNET_CONFIG)
    same = base_model.train_unet(tmp_path, vae, tokenizer, text_encoder, steps=1, batch=2,
                                 pool_size=2, start_from=start, lr=0.0, checkpoint="a.pt")
    for name, tensor in start.state_dict().items():
        assert torch.equal(same.state_dict()[name], tensor), name
    moved = base_model.train_unet(tmp_path, vae, tokenizer, text_encoder, steps=1, batch=2,
                                  pool_size=2, start_from=start, lr=1e-3, checkpoint="b.pt")
    assert not torch.equal(moved.conv_in.weight, start.conv_in.weight)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 1


def test_loras_of_another_base_are_dropped_before_the_loras_stage(tmp_path, monkeypatch):
    from styles.starter import build

    pipeline, loras = tmp_path / "pipeline", tmp_path / "loras"
    pipeline.mkdir()
    loras.mkdir()
    (pipeline / "model_index.json").write_text("{}")
    info = {"unet_steps": 5000, "prediction_type": "v_prediction", "schedule_steps": 1500}
    (pipeline / MODEL_CARD).write_text(json.dumps(info))
    monkeypatch.setattr(build, "PIPELINE_DIR", pipeline)
    monkeypatch.setattr(build, "LORA_DIR", loras)
    monkeypatch.setattr(build, "MANIFEST", tmp_path / "manifest.json")
    (loras / "sepia.safetensors").write_bytes(b"x")
    build.MANIFEST.write_text(json.dumps({"base": build._base_key(), "styles": []}))
    assert build.drop_stale_loras() == []  # trained on this base: kept
    build.MANIFEST.write_text(json.dumps({"styles": []}))  # the epsilon-prediction pack's
    assert build.drop_stale_loras() == [loras / "sepia.safetensors"]
    assert not build.MANIFEST.exists() and not list(loras.iterdir())
    # another recipe: a manifest without lora_ema was built without it (decay 0)
    (loras / "sepia.safetensors").write_bytes(b"x")
    shipped = {"base": build._base_key(), "lora_steps": 400, "lora_batch": 8, "lora_lr": 3e-3,
               "lora_rank": 8, "lora_pool": 800, "styles": []}
    build.MANIFEST.write_text(json.dumps(shipped))
    assert build.drop_stale_loras(build.BuildPlan(lora_steps=400, lora_ema=0.0,
                                                  lora_tuning={})) == []
    assert build.drop_stale_loras(build.BuildPlan(lora_steps=400, lora_ema=0.99,
                                                  lora_tuning={})) == [
        loras / "sepia.safetensors"]
    # a per-style tuning is part of the recipe: a pack built without it (or another) is stale
    (loras / "sepia.safetensors").write_bytes(b"x")
    tuned = build.BuildPlan(lora_tuning={"sepia": {"steps": 1200, "strength": 0.85}})
    build.write_manifest(tuned)
    assert json.loads(build.MANIFEST.read_text())["lora_tuning"] == tuned.lora_tuning
    assert build.drop_stale_loras(tuned) == []
    assert build.drop_stale_loras(build.BuildPlan(lora_tuning={})) == [
        loras / "sepia.safetensors"]
    assert tuned.lora_setting("sepia") == (1200, 0.85, "all")
    assert tuned.lora_setting("noir") == (tuned.lora_steps, 1.0, "all")
    decoder = build.BuildPlan(lora_tuning={"sepia": {"strength": 1.4, "blocks": "decoder"}})
    assert decoder.lora_setting("sepia") == (decoder.lora_steps, 1.4, "decoder")
    # a recommended generation setting is not a training one: the manifest records it per
    # style, and the LoRAs stay
    (loras / "sepia.safetensors").write_bytes(b"x")
    monkeypatch.setattr(build, "GENERATION_DEFAULTS", {"sepia": {"content_guidance": 1.0}})
    monkeypatch.setattr(build, "LORA_DIR", loras)
    monkeypatch.setattr("styles.starter.paths.STARTER_DIR", tmp_path)
    monkeypatch.setattr("styles.starter.paths.LORA_DIR", loras)
    build.write_manifest(tuned)
    assert build.drop_stale_loras(tuned) == []
    assert starter_recommendations() == {
        "sepia": (loras / "sepia.safetensors", {"content_guidance": 1.0})}


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


def test_a_style_lora_file_carries_its_strength_in_each_layout(tiny_pipeline_dir, tmp_path):
    """BuildPlan.lora_tuning's strength is what weight 1.0 gives, read back by our reader and
    by diffusers' own loader (which reads the adapter metadata's alpha on top of the tensors)."""
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    modules = train_style_lora(pipe, "sepia", steps=2, batch=2, pool=4, rank=2)
    table = load_base(tiny_pipeline_dir, device="cpu").table
    target = modules[0].target
    (tmp_path / "one").mkdir()
    (tmp_path / "strong").mkdir()
    for slug in ("sepia", "blueprint", sorted(STYLES)[3]):  # kohya, diffusers, sparse kohya
        plain = read_lora(save_style_lora(modules, tmp_path / "one", slug, 2, 2),
                          ReadOptions(base_table=table))
        path = save_style_lora(modules, tmp_path / "strong", slug, 2, 2, strength=1.5)
        strong = read_lora(path, ReadOptions(base_table=table))
        assert torch.allclose(strong.modules[target].delta(), 1.5 * plain.modules[target].delta(),
                              atol=1e-2, rtol=1e-2), layout_of(slug)
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        if layout_of(slug) == "diffusers":
            assert json.loads(metadata["lora_adapter_metadata"])["unet.lora_alpha"] == 2
            diffusers_pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
            layer = target.split(".", 1)[1]
            before = diffusers_pipe.unet.get_submodule(layer).weight.detach().clone()
            diffusers_pipe.load_lora_weights(str(path))
            diffusers_pipe.fuse_lora(lora_scale=1.0)
            wrapped = diffusers_pipe.unet.get_submodule(layer)  # PEFT's layer round the original
            fused = getattr(wrapped, "base_layer", wrapped).weight.detach() - before
            assert torch.allclose(fused, strong.modules[target].delta(), atol=1e-2, rtol=1e-2)
        else:
            assert metadata["ss_network_alpha"] == "3"  # rank 2 × 1.5, as the tensors say


def test_shape_word_term_is_the_hinge_on_the_wrong_captions_rise(tiny_pipeline_dir):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    x0 = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(6, 77, pipe.text_encoder.config.hidden_size)
    with torch.no_grad():
        fit, shape = shape_word_loss(pipe.unet, noise, x0, cond, cond,
                                     torch.Generator().manual_seed(1), margin=0.5, from_t=0)
        plain = base_model.diffusion_loss(pipe.unet, noise, x0, cond,
                                          torch.Generator().manual_seed(1))
        # the same noise and timesteps as the plain loss; a lie that changes nothing is
        # penalised by the whole margin
        assert torch.allclose(fit, plain) and torch.isclose(shape, torch.tensor(0.5))
        _, never = shape_word_loss(pipe.unet, noise, x0, cond, cond,
                                   torch.Generator().manual_seed(1), from_t=10_000)
        assert never == 0  # no timestep is in the band
    runs = [train_style_lora(pipe, "sepia", steps=2, batch=2, pool=4, rank=2, shape_weight=w,
                             ema=d, change_weight=c)
            for w, d, c in ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.99, 0.0), (0, 0, 4.0))]
    with pytest.raises(ValueError, match="set one"):
        train_style_lora(pipe, "sepia", steps=1, batch=2, pool=4, rank=2, shape_weight=1.0,
                         change_weight=1.0)
    plain_run = runs[0]
    for other in runs[1:]:  # each option changes what is trained, on the same modules
        assert [m.target for m in plain_run] == [m.target for m in other]
        assert not all(torch.equal(a.up, b.up) for a, b in zip(plain_run, other, strict=True))


def test_frozen_text_key_value_leaves_only_the_cross_attention_key_value_out(tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    every = {m.target for m in train_style_lora(pipe, "sepia", steps=1, batch=2, pool=4, rank=2)}
    frozen = {m.target for m in train_style_lora(pipe, "sepia", steps=1, batch=2, pool=4, rank=2,
                                                 text_kv=False)}
    text = {t for t in every if t.endswith((".attn2.to_k", ".attn2.to_v"))}
    assert text and frozen == every - text
    assert any(t.endswith(".attn1.to_k") for t in frozen)  # self-attention keeps its key


def test_change_weights_follow_the_motif_and_keep_each_images_total():
    from styles.starter.data import world_batch, world_batch_with_change

    images, captions = world_batch(np.random.default_rng(5), 6, ["crescent-moon"],
                                   plain_captions=0.5)
    same, again, changes = world_batch_with_change(np.random.default_rng(5), 6,
                                                   ["crescent-moon"], 0.5)
    assert np.array_equal(images, same) and captions == again  # the same draws
    assert changes.shape == images.shape[:3] and (changes > 0.1).any()
    # a motif changes a corner, not the frame: most pixels are untouched
    assert np.median(changes) < 0.01
    weights = change_weights(changes, 16, 4.0)
    assert weights.shape == (6, 1, 16, 16)
    assert torch.allclose(weights.mean(dim=(1, 2, 3)), torch.ones(6))
    for image_weights, change in zip(weights, changes, strict=True):  # heaviest where it changed
        pooled = change.reshape(16, 4, 16, 4).mean((1, 3))
        assert image_weights[0].flatten().argmax() == pooled.flatten().argmax()
        assert float(image_weights.max() / image_weights.min()) == pytest.approx(5.0, rel=1e-4)
    flat = change_weights(np.zeros((2, 64, 64), np.float32), 16, 4.0)
    assert torch.allclose(flat, torch.ones_like(flat))  # nothing changed: the plain loss


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
    base = load_base(PIPELINE_DIR, device="cpu")
    assert base.family == "starter"
    assert base.guidance_scale == base_model.GUIDANCE < 7.5  # the pack's card, read by the loader
    config = pipe.scheduler.config  # zero terminal SNR, v-prediction, sampled from the end
    assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
    assert config.timestep_spacing == "trailing"
    for component in PIPELINE_DIR.glob("*/config.json"):  # no path of the machine it was built on
        assert "_name_or_path" not in json.loads(component.read_text()), component


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
    from styles.starter.build import GENERATION_DEFAULTS  # the manifest is in step with it

    assert {slug: own for slug, (_, own) in starter_recommendations().items()} \
        == GENERATION_DEFAULTS
    info = json.loads((PIPELINE_DIR / MODEL_CARD).read_text())
    assert manifest["base"] == {k: info.get(k) for k in manifest["base"]}  # trained on this base


@shipped
def test_the_shipped_pack_stays_within_the_60_mb_it_aims_at():
    """Issue 3 aims at 60 MB for everything the app needs; README gives the breakdown."""
    from styles.starter.paths import STARTER_DIR

    files = [p for p in STARTER_DIR.rglob("*") if p.is_file() and p.name != "checkpoint.pt"
             and not p.name.endswith(".tmp")]  # training leftovers never ship (.dockerignore)
    assert sum(p.stat().st_size for p in files) <= 60e6


def test_a_tokenizer_json_folder_is_compacted_to_the_same_ids(tmp_path):
    from transformers import CLIPTokenizer

    from styles.tokenizer import (
        clip_tokenizer,
        compact_tokenizer_folder,
        write_clip_tokenizer_files,
    )

    folder = tmp_path / "tokenizer"
    clip_tokenizer(str(write_clip_tokenizer_files(tmp_path / "tok"))).save_pretrained(folder)
    assert (folder / "tokenizer.json").is_file()  # what transformers writes
    texts = ["a red star, chunky blocks like an old video game", "ÜNÏCÖDÉ 🙂\tx2.5!!",
             "a heart drawn only with thin contour lines " * 12]
    before = CLIPTokenizer.from_pretrained(folder)(texts).input_ids
    assert compact_tokenizer_folder(folder)
    assert not (folder / "tokenizer.json").exists() and (folder / "merges.txt").is_file()
    assert CLIPTokenizer.from_pretrained(folder)(texts).input_ids == before
    assert not compact_tokenizer_folder(folder)  # once is enough
    folder.rename(tmp_path / "tokenizer.old")  # as if stopped between its two renames
    compact_tokenizer_folder(folder)
    assert CLIPTokenizer.from_pretrained(folder)(texts).input_ids == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok", "tokenizer"]


def test_style_word_tuning_moves_the_unet_and_records_it(tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from styles.tokenizer import write_clip_tokenizer_files

    vae = base_model.train_vae(tmp_path, steps=1, batch=2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**base_model.TEXT_CONFIG)).eval()
    torch.manual_seed(3)
    unet = UNet2DConditionModel(**base_model.UNET_CONFIG)
    folder = tmp_path / "pipeline"
    base_model.save_pipeline(folder, vae, unet, text_encoder,
                             write_clip_tokenizer_files(tmp_path / "tok"), {"unet_steps": 1})
    before = StableDiffusionPipeline.from_pretrained(folder).unet.conv_in.weight.clone()
    base_model.tune_style_words(folder, tmp_path / "work", steps=1, pool_size=4)
    info = json.loads((folder / MODEL_CARD).read_text())
    assert info["style_word_steps"] == 1 and info["unet_steps"] == 1
    after = StableDiffusionPipeline.from_pretrained(folder).unet.conv_in.weight
    assert not torch.equal(after, before)


def test_base_stage_tunes_style_words_once(tmp_path, monkeypatch):
    from styles.starter import base_model as bm
    from styles.starter import build

    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text("{}")
    card = pipeline / MODEL_CARD
    card.write_text(json.dumps({"unet_steps": 5000, "prediction_type": "v_prediction"}))
    monkeypatch.setattr(build, "PIPELINE_DIR", pipeline)
    calls = []

    def tune(folder, work, steps, seed=0, progress=None):
        calls.append(steps)
        card.write_text(json.dumps({**json.loads(card.read_text()), "style_word_steps": steps}))

    monkeypatch.setattr(bm, "tune_style_words", tune)
    untuned = build._base_key()
    assert "style_word_steps" not in untuned  # the shipped manifest's key still matches
    build._build_or_convert_base(build.BuildPlan(work=tmp_path / "work"))  # off by default
    assert calls == [] and build._base_key() == untuned
    plan = build.BuildPlan(work=tmp_path / "work", style_word_steps=2000)
    build._build_or_convert_base(plan)
    build._build_or_convert_base(plan)  # already tuned: kept
    assert calls == [2000]
    assert build._base_key()["style_word_steps"] == 2000


def test_a_decoder_only_style_lora_keeps_only_the_up_blocks_in_each_layout(tiny_pipeline_dir,
                                                                          tmp_path):
    """BuildPlan.lora_tuning's `blocks`: a "decoder" file holds the up blocks' modules only,
    with their deltas (times the strength) unchanged, and loads as any other file."""
    from diffusers import StableDiffusionPipeline

    from styles.starter.style_loras import with_blocks

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    modules = train_style_lora(pipe, "sepia", steps=2, batch=2, pool=4, rank=2)
    table = load_base(tiny_pipeline_dir, device="cpu").table
    up = {m.target: m for m in modules if m.path.startswith("up_blocks.")}
    assert up and len(up) < len(modules)
    assert with_blocks(modules, "all") == modules
    for slug in ("sepia", "blueprint", sorted(STYLES)[3]):  # kohya, diffusers, sparse kohya
        path = save_style_lora(modules, tmp_path, slug, 2, 2, strength=1.4, blocks="decoder")
        lora = read_lora(path, ReadOptions(base_table=table))
        assert set(lora.modules) == set(up), layout_of(slug)
        for target, module in up.items():
            assert torch.allclose(lora.modules[target].delta(), 1.4 * module.delta(),
                                  atol=1e-2, rtol=1e-2)
