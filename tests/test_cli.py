"""The `loratlas` command line, run as a user runs it (a subprocess), JSON checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from styles.writers import save_diffusers, save_kohya
from tests.conftest import REPO, fixtures_dir, random_lora


def loratlas(*args: str, home=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORATLAS_HOME": str(home or REPO / ".cache")}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


@pytest.mark.skipif(fixtures_dir() is None, reason="real fixtures not found")
def test_inspect_json_and_exit_codes():
    folder = fixtures_dir()
    ok = loratlas("inspect", str(folder / "Krishna4311__Cloud-LoRA-Object-Removal__"
                                          "pytorch_lora_weights.safetensors"), "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert set(report) >= {"ok", "format", "family", "rank", "alpha", "modules", "dtype",
                           "metadata", "warnings", "errors"}
    assert (report["ok"], report["family"], report["rank"]) == (True, "sd1", 4)
    refused = loratlas("inspect", str(next((folder / "pickles").iterdir())), "--json")
    assert refused.returncode == 2
    assert json.loads(refused.stdout)["errors"][0]["code"] == "pickle"
    wrong = loratlas("inspect", "--base-family", "sd1", str(
        folder / "JustinJiangNext__lora-2.0__pytorch_lora_weights.safetensors"))
    assert wrong.returncode == 2 and "Stable Diffusion 2.x" in wrong.stdout


def test_generate_with_three_loras_and_replay(tiny_base, tiny_pipeline_dir, tmp_path):
    table = tiny_base.table
    library = tmp_path / "library"
    save_kohya(random_lora(table, seed=1), library / "ink.safetensors", alpha=1.0)
    save_diffusers(random_lora(table, seed=2), library / "glow.safetensors")
    third = save_kohya(random_lora(table, seed=3), tmp_path / "third.safetensors")
    out = tmp_path / "out"
    run = loratlas("generate", "a red star", "--base-model", str(tiny_pipeline_dir),
                   "--library", str(library), "--lora", "ink:0.8", "--lora", "glow",
                   "--lora", f"{third}:0.5", "--steps", "3", "--size", "32x32",
                   "--num-images", "2", "--seed", "5", "--out", str(out), "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert len(result["files"]) == 2 and result["seconds_per_image"] > 0
    assert [lora["weight"] for lora in result["recipe"]["loras"]] == [0.8, 1.0, 0.5]
    replay = loratlas("generate", "--recipe", result["files"][1], "--library", str(library),
                      "--out", str(tmp_path / "replay"), "--json")
    assert replay.returncode == 0, replay.stderr
    replayed = json.loads(replay.stdout)
    assert replayed["identical_to_source"] is True
    with Image.open(replayed["files"][0]) as a, Image.open(result["files"][1]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_generate_reports_a_missing_lora(tiny_pipeline_dir, tmp_path):
    run = loratlas("generate", "a star", "--base-model", str(tiny_pipeline_dir), "--lora",
                   "nope", "--steps", "1", "--out", str(tmp_path), "--json")
    assert run.returncode == 2
    assert "'nope' is neither a file nor a style" in json.loads(run.stdout)["error"]


def test_generate_reports_a_base_model_it_cannot_load(tiny_pipeline_dir, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_pipeline_dir, tmp_path / "base")
    (folder / "loratlas_starter.json").write_text('{"guidance_scale": "high"}')
    run = loratlas("generate", "a star", "--base-model", str(folder), "--steps", "1",
                   "--out", str(tmp_path), "--json")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "'guidance_scale' must be a number" in json.loads(run.stdout)["error"]


def test_library_commands_import_list_show_edit_remove(tiny_base, tiny_pipeline_dir, tmp_path):
    incoming = tmp_path / "incoming"
    save_kohya(random_lora(tiny_base.table, seed=11), incoming / "ink.safetensors",
               metadata={"ss_output_name": "Ink wash"})
    (incoming / "evil.safetensors").write_bytes(b"\x80\x04\x95pickle")
    base = ("--base-model", str(tiny_pipeline_dir), "--library", str(tmp_path / "library"))
    imported = loratlas("library", "import", str(incoming), "--json", *base)
    assert imported.returncode == 1, imported.stderr  # one file was refused
    files = {f["file"]: f for f in json.loads(imported.stdout)["files"]}
    assert files["ink.safetensors"]["ok"] and files["ink.safetensors"]["slug"] == "ink-wash"
    assert files["evil.safetensors"]["error"]["code"] == "pickle"
    listed = json.loads(loratlas("library", "list", "--json", *base).stdout)["styles"]
    assert [s["slug"] for s in listed] == ["ink-wash"]
    edited = loratlas("library", "edit", "ink-wash", "--tags", "ink, wash", *base)
    assert edited.returncode == 0 and json.loads(edited.stdout)["tags"] == ["ink", "wash"]
    card = json.loads(loratlas("library", "show", "ink-wash", *base).stdout)
    assert card["name"] == "Ink wash" and len(card["thumbnails"]) == 4
    assert loratlas("library", "remove", "ink-wash", *base).returncode == 0
    assert json.loads(loratlas("library", "list", "--json", *base).stdout)["styles"] == []
    missing = loratlas("library", "remove", "ink-wash", *base)
    assert missing.returncode == 1 and "no style 'ink-wash'" in missing.stderr
