"""The documented API, end to end: gradio_client against the launched page on a real (tiny
random) pipeline and a real library folder."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.service import LoratlasService, ServiceConfig
from app.web import available_modes
from styles.writers import save_kohya
from tests.conftest import fixtures_dir, random_lora
from tests.web_server import missing_actions, served

pytestmark = pytest.mark.slow
gradio_client = pytest.importorskip("gradio_client")
SD1_FIXTURE = "Krishna4311__Cloud-LoRA-Object-Removal__pytorch_lora_weights.safetensors"
PICKLE_FIXTURE = "pickles/catundchat__stable-diffusion-v1.5-lora__pytorch_lora_weights.bin"


@pytest.fixture(scope="module")
def service(tiny_pipeline_dir, tmp_path_factory):
    """An empty library: styles arrive through /upload (test_library_actions)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LORATLAS_HOME", str(home))
        yield LoratlasService(ServiceConfig(base_model=str(tiny_pipeline_dir),
                                            library=str(home / "library"), device="cpu"))


@pytest.fixture(scope="module")
def client(service, tmp_path_factory):
    with served(service, tmp_path_factory.mktemp("outputs")) as url:
        yield gradio_client.Client(url, verbose=False)


def needs(service, *actions):
    missing = missing_actions(service, actions)
    if missing:
        pytest.skip(f"the service has no {', '.join(missing)} yet")


def test_every_documented_endpoint_is_listed(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert names == {f"/{n}" for n in ("generate", "retrieve", "replay", "inspect",
                                       "library_list", "style_card", "atlas", "recommend",
                                       "upload", "edit_style", "remove_style", "about")}


def test_generate_then_replay_gives_the_same_pixels(client):
    gallery, recipe, recipe_file, _gate, _gate_map = client.predict(
        prompt="a red star", styles=[], mode="merge", steps=3, seed=7, size="native", count=2,
        api_name="/generate")
    assert len(gallery) == 2 and gallery[1]["caption"] == "seed 8"
    recipe = json.loads(recipe)
    assert recipe["seed"] == 7 and recipe["num_images"] == 2
    assert json.loads(Path(recipe_file).read_text()) == recipe
    first = gallery[0]["image"]
    assert Image.open(first).text.get("loratlas-recipe")  # the PNG carries its recipe
    replayed = client.predict(gradio_client.handle_file(first), api_name="/replay")
    assert np.array_equal(np.asarray(Image.open(first)),
                          np.asarray(Image.open(replayed[0][0]["image"])))
    assert replayed[5] == "a red star" and replayed[9] == 7  # the form is filled too


def test_a_bad_request_is_an_error_with_a_message(client):
    with pytest.raises(gradio_client.exceptions.AppError, match="multiples of 8"):
        client.predict(prompt="a star", styles=[], mode="merge", steps=2, seed=0,
                       size="100x100", count=1, api_name="/generate")
    with pytest.raises(gradio_client.exceptions.AppError, match="slug"):
        client.predict(prompt="a star", styles=["/etc/passwd"], mode="merge", steps=2, seed=0,
                       size="native", count=1, api_name="/generate")


def test_inspect_refuses_the_pickle_unread(client):
    folder = fixtures_dir()
    if folder is None:
        pytest.skip("../shared/fixtures/real_loras is not here")
    report = client.predict(gradio_client.handle_file(str(folder / PICKLE_FIXTURE)),
                            api_name="/inspect")
    assert report["ok"] is False and report["errors"][0]["code"] == "pickle"


def test_four_users_generate_at_once(client):
    def one(seed: int):
        job = client.submit(prompt="a blue square", styles=[], mode="merge", steps=2, seed=seed,
                            size="native", count=1, api_name="/generate")
        return job.result(timeout=300)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert [len(r[0]) for r in results] == [1, 1, 1, 1]


def test_library_actions(client, service, tiny_base, tmp_path):
    """Upload a style, a real SD 1.5 LoRA and a pickle; list, map, card, edit, generate with
    the style (gated when the engine has it), recommend, remove."""
    needs(service, "library_list", "style_card", "atlas", "recommend", "edit_style",
          "remove_style", "about", "upload")
    folder = fixtures_dir()
    if folder is None:
        pytest.skip("../shared/fixtures/real_loras is not here")
    ink = tmp_path / "ink.safetensors"
    save_kohya(random_lora(tiny_base.table, seed=5), ink)
    upload = [ink, shutil.copy(folder / SD1_FIXTURE, tmp_path / "cloud.safetensors"),
              shutil.copy(folder / PICKLE_FIXTURE, tmp_path / "weights.bin")]
    reports = client.predict([gradio_client.handle_file(str(p)) for p in upload],
                             api_name="/upload")
    by_file = {r["file"]: r for r in reports}
    assert by_file["weights.bin"]["ok"] is False
    assert by_file["weights.bin"]["error"]["code"] == "pickle"
    assert by_file["ink.safetensors"]["ok"] and by_file["cloud.safetensors"]["ok"], reports
    slug, sd1 = by_file["ink.safetensors"]["slug"], by_file["cloud.safetensors"]["slug"]

    assert client.predict(api_name="/about")["styles"] >= 2
    listed = client.predict(text="", family=None, tags=[], api_name="/library_list")
    assert {slug, sd1} <= {s["slug"] for s in listed}
    assert slug in [p["slug"] for p in client.predict(api_name="/atlas")["points"]]
    assert client.predict(sd1, api_name="/style_card")["applicable"] is False  # SD 1.5 LoRA
    edited = client.predict(slug=slug, name="Ink Wash", tags="ink, wash", description="test",
                            api_name="/edit_style")
    assert edited["name"] == "Ink Wash" and edited["tags"] == ["ink", "wash"]
    found = client.predict(text="wash", family=None, tags=[], api_name="/library_list")
    assert [s["slug"] for s in found] == [slug]
    sd1_only = client.predict(text="", family="sd1", tags=[], api_name="/library_list")
    assert [s["slug"] for s in sd1_only] == [sd1]
    assert isinstance(client.predict([slug], 5, api_name="/recommend"), list)

    mode = "gated" if "gated" in available_modes() else "merge"
    _, recipe, _, heatmap, gates = client.predict(
        prompt="a red star", styles=[{"slug": slug, "weight": 0.8}], mode=mode, steps=2, seed=0,
        size="native", count=1, api_name="/generate")
    assert json.loads(recipe)["loras"][0]["weight"] == 0.8
    if mode == "gated":
        assert gates["loras"] == [slug] and heatmap is not None
    with pytest.raises(gradio_client.exceptions.AppError, match="applied|fit|family|base"):
        client.predict(prompt="a red star", styles=[sd1], mode="merge", steps=2, seed=0,
                       size="native", count=1, api_name="/generate")

    assert client.predict(sd1, api_name="/remove_style") == {"removed": sd1}
    remaining = client.predict(text="", family=None, tags=[], api_name="/library_list")
    assert sd1 not in [s["slug"] for s in remaining]
