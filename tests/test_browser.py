"""What a new user does, in headless Chromium: type a prompt and generate, open the atlas and use
a style, upload a real LoRA and a pickle. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from app.service import LoratlasService, ServiceConfig
from tests.conftest import fixtures_dir
from tests.web_server import ARTIFACTS, served

pytestmark = pytest.mark.slow
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("LORATLAS_CHROMIUM", "/usr/bin/chromium")
SD1_FIXTURE = "Krishna4311__Cloud-LoRA-Object-Removal__pytorch_lora_weights.safetensors"
PICKLE_FIXTURE = "pickles/catundchat__stable-diffusion-v1.5-lora__pytorch_lora_weights.bin"
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """What a new user gets: the default base (the starter pack) and a fresh library, seeded
    with the starter styles."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LORATLAS_HOME", str(home))
        service = LoratlasService(ServiceConfig(library=str(home / "library"), device="cpu"))
        if hasattr(service, "library"):
            service.library  # noqa: B018 - open and seed it now, not during the first click
        yield service


@pytest.fixture(scope="module")
def url(service, tmp_path_factory):
    with served(service, tmp_path_factory.mktemp("outputs")) as address:
        yield address


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#prompt textarea")
    yield page
    page.close()


def shot(page, name: str) -> Path:
    """A full-page screenshot kept as a test artifact; the page must show no error."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    errors = page.locator(".toast-body.error").all_inner_texts()
    assert not errors, f"the page shows errors (see {path}): {errors}"
    return path


def test_type_a_prompt_and_generate(page):
    """Styles are suggested while typing (when the library has styles that fit), then one
    click generates."""
    page.locator("#prompt textarea").press_sequentially(
        "a red star, chunky blocks like an old video game", delay=20)
    page.click("#find-styles")  # on demand too; either way the rows show what was found
    found = page.locator(".style-row").or_(page.locator("#style-status", has_text="No style"))
    playwright.expect(found.first).to_be_visible()
    page.get_by_label("Steps").first.fill("12")
    page.locator("#content-guidance-default input").uncheck()  # the slider is the style's until
    keep = page.locator("#content-guidance input[type=number]")
    playwright.expect(keep).to_be_enabled()
    keep.fill("1")
    keep.press("Enter")
    page.click("#generate")
    page.wait_for_selector("#gallery img")
    page.wait_for_function("document.querySelector('#gallery img').naturalWidth > 0")
    page.get_by_text("Recipe", exact=True).first.click()  # the recipe records the slider
    playwright.expect(page.locator(".cm-content").first).to_contain_text(
        '"content_guidance": 1')
    shot(page, "create_generated")


def test_a_pasted_prompt_gets_suggestions(page):
    """A prompt that arrives in one piece (pasted with the mouse: no key events) is read too."""
    page.fill("#prompt textarea", "a blue circle glowing like neon tubes at night")
    playwright.expect(page.locator("#style-label-0")).to_contain_text("neon-night")


def test_open_the_atlas_and_use_a_style(page, service):
    page.get_by_role("tab", name="Atlas").click()
    page.wait_for_selector("#atlas-map .atlas, #atlas-map .atlas-empty")
    assert page.locator("#atlas-map .pt:not(.other)").count() > 0, "no usable style on the map"
    # stained-glass recommends content guidance (styles/starter/build.py GENERATION_DEFAULTS):
    # its card says so, and using it alone applies it
    point = page.locator('#atlas-map .pt[data-slug="stained-glass"]')
    slug = point.get_attribute("data-slug")
    point.hover()
    shot(page, "atlas_hover")
    point.click()
    page.wait_for_selector("#style-card h3")
    playwright.expect(page.locator("#style-card")).to_contain_text(
        "recommends content guidance 0.5")
    use = page.locator("#use-style")
    playwright.expect(use).to_be_enabled()
    page.click("#like-style")  # recommendations from what this session liked
    playwright.expect(page.locator("#recommendations").get_by_role("gridcell").first).to_be_visible()
    shot(page, "atlas_card")
    use.click()
    label = page.locator("#style-label-0")
    playwright.expect(label).to_contain_text(slug)
    # the slider shows the content guidance the style alone will get
    playwright.expect(page.locator("#content-guidance input[type=number]")).to_have_value("0.5")
    # a prompt retrieval suggests no style for ("a blue square" now brings blueprint, which
    # would make a blend, and a blend gets no style's recommendation)
    page.fill("#prompt textarea", "a red star")
    page.click("#generate")
    page.wait_for_selector("#gallery img")
    page.get_by_text("Recipe", exact=True).first.click()
    playwright.expect(page.locator(".cm-content").first).to_contain_text(
        '"content_guidance": 0.5')
    shot(page, "atlas_style_used")


def test_upload_a_real_lora_and_a_pickle(page, service, tmp_path):
    folder = fixtures_dir()
    if folder is None:
        pytest.skip("../shared/fixtures/real_loras is not here")
    files = [shutil.copy(folder / SD1_FIXTURE, tmp_path / "cloud-removal.safetensors"),
             shutil.copy(folder / PICKLE_FIXTURE, tmp_path / "weights.bin")]
    page.get_by_role("tab", name="Library").click()
    page.locator("#upload-files input[type=file]").set_input_files([str(f) for f in files])
    chosen = page.locator("#upload-files")
    playwright.expect(chosen).to_contain_text("weights")  # shown as "weights .bin"
    playwright.expect(chosen).not_to_contain_text("Uploading")
    page.click("#upload")
    report = page.locator("#upload-report")
    playwright.expect(report).to_contain_text("refused", timeout=TIMEOUT_MS)
    playwright.expect(report).to_contain_text("cloud-removal.safetensors")
    playwright.expect(report).to_contain_text("accepted")
    playwright.expect(report).to_contain_text("pickle")
    shot(page, "library_upload_report")
