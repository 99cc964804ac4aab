"""The new modes from the CLI and the service: --mode cmlora|gated, --gates-out, --auto."""

from __future__ import annotations

import json

import pytest

from styles.writers import save_kohya
from tests.conftest import random_lora
from tests.test_cli import loratlas


@pytest.fixture(scope="module")
def library(tiny_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("library")
    save_kohya(random_lora(tiny_base.table, seed=1), folder / "ink.safetensors", alpha=1.0)
    save_kohya(random_lora(tiny_base.table, seed=2), folder / "glow.safetensors", alpha=1.0)
    return folder


@pytest.mark.parametrize("mode", ["gated", "cmlora"])
def test_generate_new_modes_and_write_the_gate_map(mode, tiny_pipeline_dir, library, tmp_path):
    gates = tmp_path / "gates.json"
    ink, glow = str(library / "ink.safetensors"), str(library / "glow.safetensors")
    run = loratlas("generate", "a red star", "--base-model", str(tiny_pipeline_dir),
                   "--library", str(tmp_path / "lib"), "--lora", f"{ink}:0.8", "--lora", glow,
                   "--mode", mode, "--steps", "2", "--size", "32x32", "--out",
                   str(tmp_path / "out"), "--gates-out", str(gates), "--json",
                   home=tmp_path / "home")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["recipe"]["mode"] == mode and len(result["files"]) == 1
    gate_map = json.loads(gates.read_text())
    assert gate_map["loras"] == [ink, glow] and gate_map["steps"] == 2
    assert len(gate_map["values"]) == len(gate_map["layers"]) > 0
    assert len(gate_map["values"][0]) == 2 and len(gate_map["values"][0][0]) == 2
    if mode == "gated":
        assert result["unet_passes"] == 2
        assert set(result["gate_sources"].values()) <= {"learned", "prior", "user"}


def test_generate_auto_adds_the_retrieved_styles(tiny_pipeline_dir, library, tmp_path):
    from app.service import GenerateRequest, LoratlasService, RetrieveResult, ServiceConfig

    service = LoratlasService(ServiceConfig(base_model=str(tiny_pipeline_dir),
                                            library=str(tmp_path / "lib"), device="cpu"))
    glow = str(library / "glow.safetensors")

    def retrieve(prompt: str, k: int = 3) -> RetrieveResult:  # a fake retriever
        return RetrieveResult(prompt, [{"slug": glow, "name": "Glow", "score": 3.0,
                                        "reasons": {}}][:k])

    service.retrieve = retrieve
    result = service.generate(GenerateRequest("a red star", steps=2, width=32, height=32,
                                              mode="gated", auto=2))
    assert [lora["ref"] for lora in result.recipe["loras"]] == [glow]
    assert result.styles[0]["slug"] == glow and result.gates["loras"] == [glow]
