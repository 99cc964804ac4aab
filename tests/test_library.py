"""The style library through the service: upload, duplicates, refusals, edit, remove, atlas,
recommendations, concurrency, and the crash test (kill -9 at every ingest step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from app.service import LoratlasService, ServiceConfig, ServiceError
from app.style_library import CRASH_ENV, INGEST_STEPS
from styles.atlas import JSON_VERSION, AtlasLayout
from styles.lora import LoraModule
from styles.starter.paths import starter_available, starter_loras
from styles.writers import save_kohya
from tests.conftest import REPO, fixtures_dir, random_lora


def _service(pipeline: Path, library: Path) -> LoratlasService:
    return LoratlasService(ServiceConfig(base_model=str(pipeline), library=str(library),
                                         device="cpu"))


def _lora_file(table, folder: Path, name: str, seed: int, **metadata) -> Path:
    path = folder / f"{name}.safetensors"
    save_kohya(random_lora(table, seed=seed), path, metadata=metadata or None)
    return path


@pytest.fixture()
def files(tiny_base, tmp_path) -> dict[str, Path]:
    folder = tmp_path / "incoming"
    folder.mkdir()
    return {f"style{i}": _lora_file(tiny_base.table, folder, f"style{i}", seed=i,
                                    ss_output_name=f"Style {i}", ss_tag_frequency=(
                                        f'{{"d": {{"tag{i}": 3, "shared": 1}}}}'))
            for i in range(4)}


@pytest.fixture()
def service(tiny_pipeline_dir, tmp_path) -> LoratlasService:
    return _service(tiny_pipeline_dir, tmp_path / "library")


def test_a_map_drawn_from_a_few_styles_is_redrawn_once_it_holds_twice_as_many(
        tiny_pipeline_dir, tiny_base, tmp_path):
    """Each upload is placed without moving the others, so a library that grew one style at a
    time would keep the clusters of its first three forever; on open, a map holding twice the
    styles it was fitted on is fitted again from all of them."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    paths = [_lora_file(tiny_base.table, folder, f"grow{i}", seed=20 + i) for i in range(6)]
    service = _service(tiny_pipeline_dir, tmp_path / "library")
    for path in paths:  # one upload at a time, as a user adds them
        assert service.upload([path])[0].ok
    library = service.library
    assert len(library.atlas.ids) == 6 and library.atlas.fitted_on == 3
    reopened = _service(tiny_pipeline_dir, tmp_path / "library").library
    assert reopened.atlas.fitted_on == 6 and len(reopened.atlas.ids) == 6
    again = _service(tiny_pipeline_dir, tmp_path / "library").library
    assert again.atlas.points() == reopened.atlas.points()  # saved: not redrawn every open


def test_an_atlas_cache_from_an_older_version_is_redrawn_on_open(tiny_pipeline_dir, tiny_base,
                                                                 tmp_path):
    """A map saved by an older release (another JSON version, clusters in another space) is
    drawn again from the catalog when the library opens, instead of failing the page."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    paths = [_lora_file(tiny_base.table, folder, f"old{i}", seed=40 + i) for i in range(4)]
    service = _service(tiny_pipeline_dir, tmp_path / "library")
    assert all(r.ok for r in service.upload(paths))
    library = service.library
    assert library.atlas.fitted_on == 3  # the fourth upload was placed on a map of three
    saved = json.loads(library.atlas_path.read_text())
    saved["version"] = 1
    saved["centroids"] = [[0.0] * 10]  # as version 1 kept them: in the PCA space
    library.atlas_path.write_text(json.dumps(saved))
    reopened = _service(tiny_pipeline_dir, tmp_path / "library").library
    assert reopened.atlas.fitted_on == 4 and sorted(reopened.atlas.ids) == sorted(library.atlas.ids)
    assert json.loads(reopened.atlas_path.read_text())["version"] == JSON_VERSION


def test_upload_indexes_maps_and_lists_each_style(service, files):
    reports = service.upload(list(files.values()))
    assert [r.ok for r in reports] == [True] * 4, [r.error for r in reports]
    slugs = [r.slug for r in reports]
    listed = {s.slug: s for s in service.library_list()}
    assert set(slugs) <= set(listed)
    assert all(listed[s].applicable and listed[s].thumbnail for s in slugs)
    assert Path(listed[slugs[0]].thumbnail).is_file()
    atlas = service.atlas()
    assert {p.slug for p in atlas.points} >= set(slugs)
    card = service.style_card(slugs[0])
    assert card.sha256 and card.thumbnails and card.nearest
    assert slugs[0] not in {n["slug"] for n in card.nearest}
    retriever = service.retriever()
    assert all(retriever.vector("probes", s) is not None for s in slugs)
    assert [s.slug for s in service.library_list(text="tag2")] == [slugs[2]]


def test_exact_and_near_duplicates(service, files, tiny_base, tmp_path):
    first = service.upload([files["style0"]])[0]
    again = service.upload([files["style0"]])[0]
    assert again.ok and again.duplicate_of == first.slug and again.slug is None
    noisy = [LoraModule(m.target, m.kind, m.down + 1e-3 * torch.randn_like(m.down), m.up,
                        m.scale) for m in random_lora(tiny_base.table, seed=0)]
    save_kohya(noisy, tmp_path / "copy.safetensors")
    near = service.upload([tmp_path / "copy.safetensors"])[0]
    assert near.ok and near.slug and near.near_duplicate_of == first.slug
    other = service.upload([files["style1"]])[0]
    assert other.near_duplicate_of is None
    assert "near-duplicate of" in service.style_card(near.slug).flags[0]


def test_bad_files_are_refused_with_reasons_and_leave_nothing(service, tmp_path):
    pickle = tmp_path / "model.safetensors"
    pickle.write_bytes(b"\x80\x04\x95junk")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    reports = service.upload([pickle, empty])
    assert [r.ok for r in reports] == [False, False]
    assert reports[0].error["code"] == "pickle" and reports[0].file == "model.safetensors"
    assert reports[1].error["message"]
    library = service.library
    assert library.catalog.ids() == [] and library.blobs.shas() == []


@pytest.mark.skipif(fixtures_dir() is None, reason="real fixtures not found")
def test_a_lora_for_another_base_is_kept_marked_and_never_applied(service):
    real = fixtures_dir() / "Krishna4311__Cloud-LoRA-Object-Removal__pytorch_lora_weights" \
                            ".safetensors"
    report = service.upload([real])[0]
    family = service.engine.base.family
    assert report.ok, report.error
    card = service.style_card(report.slug)
    assert card.family == "sd1"
    if family != "sd1":
        assert not card.applicable and any("never applied" in f for f in card.flags)
        assert report.slug not in {h["slug"] for h in service.retrieve(card.name).hits}


def test_edit_and_remove_leave_nothing_behind(service, files):
    slug = service.upload([files["style1"]])[0].slug
    card = service.edit_style(slug, name="Ink wash", tags=["ink", "wash"])
    assert (card.name, card.tags) == ("Ink wash", ["ink", "wash"])
    assert "ink" in service.retriever().records[slug].keywords
    library = service.library
    blobs = set(library.blobs.shas())
    service.remove_style(slug)
    assert slug not in library.catalog and not library.blobs.shas()
    assert blobs and all(slug not in index for index in library.retriever.indexes.values())
    assert slug not in {p.slug for p in service.atlas().points}
    with pytest.raises(ServiceError, match="no style"):
        service.remove_style(slug)


@pytest.mark.skipif(fixtures_dir() is None, reason="real fixtures not found")
def test_a_style_with_nothing_to_place_it_by_joins_the_map_when_it_gets_tags(service, files):
    """A LoRA for another base with no name, tags or description in the file has no view
    vector, so no point on the map; naming or tagging it gives it one at once."""
    placed = service.upload(list(files.values())[:3])
    assert all(r.ok and r.note is None for r in placed)  # on the map: nothing to say
    real = fixtures_dir() / "Krishna4311__Cloud-LoRA-Object-Removal__pytorch_lora_weights" \
                            ".safetensors"
    report = service.upload([real])[0]
    slug = report.slug
    if service.engine.base.family == "sd1":
        pytest.skip("the tiny base is sd1: the file is applied and rendered")
    assert slug not in {p.slug for p in service.atlas().points}
    # the user is told why, and what to do, on the upload report and on the style's card
    assert all(words in report.note for words in ("not on the map", "sd1", "edit the style"))
    assert report.note in service.style_card(slug).flags
    service.edit_style(slug, tags=["cloud", "removal"])
    assert slug in {p.slug for p in service.atlas().points}
    assert not any("not on the map" in f for f in service.style_card(slug).flags)


def test_recommendations_exclude_what_was_liked(service, files):
    slugs = [r.slug for r in service.upload(list(files.values()))]
    recommended = [s.slug for s in service.recommend(slugs[:1], k=2)]
    assert len(recommended) == 2 and slugs[0] not in recommended
    assert service.recommend(["no-such-style"]) == []


def test_concurrent_uploads_all_land(service, files):
    assert service.library.catalog.ids() == []  # opened first: threads race on ingest only
    reports = []
    threads = [threading.Thread(target=lambda p=p: reports.extend(service.upload([p])))
               for p in files.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.ok for r in reports) == [True] * 4
    assert len(service.library.catalog.ids()) == 4
    assert set(service.library.retriever.indexes["probes"].ids()) == set(
        service.library.catalog.ids())


def test_an_upload_renders_its_thumbnails_before_it_takes_the_folder(service, files,
                                                                    monkeypatch):
    import app.style_library as style_library

    library, render = service.library, style_library.probe_images
    held = []

    def watched(*args, **kwargs):
        held.append((library._folder_lock.is_locked, library._depth))
        return render(*args, **kwargs)

    monkeypatch.setattr(style_library, "probe_images", watched)
    (report,) = service.upload([files["style0"]])
    assert report.ok and held == [(False, 0)]  # other writers never wait for the renders
    assert len(service.library.catalog.get(report.slug).thumbnails) == len(
        render(library.parts.engine, library.lora(report.slug), "again"))
    assert service.upload([files["style0"]])[0].duplicate_of == report.slug
    assert len(held) == 1  # a known file is not rendered again


def test_loose_files_in_the_library_folder_are_imported_once(tiny_pipeline_dir, tiny_base,
                                                             tmp_path):
    folder = tmp_path / "library"
    folder.mkdir()
    _lora_file(tiny_base.table, folder, "dropped", seed=9)
    assert _service(tiny_pipeline_dir, folder).library_list()[0].slug == "dropped"
    reopened = _service(tiny_pipeline_dir, folder)
    assert [s.slug for s in reopened.library_list()] == ["dropped"]
    assert reopened.library.recovered == []


CRASHING_INGEST = """
import sys
from app.service import LoratlasService, ServiceConfig
service = LoratlasService(ServiceConfig(base_model=sys.argv[1], library=sys.argv[2],
                                        device="cpu"))
service.library
print("opened", flush=True)
service.upload([sys.argv[3]])
"""


def _run_script(script: str, *args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _consistent(library) -> list[str]:
    """The library's ids, after checking that the map, the fingerprints and the probes view
    hold exactly those, the other views no others (a style may lack one), and the blob store
    only their files and thumbnails."""
    entries = library.catalog.list()
    assert set(library.blobs.shas()) == {sha for e in entries for sha in [e.blob, *e.thumbnails]}
    ids = sorted(e.id for e in entries)
    assert sorted(library.retriever.indexes["probes"].ids()) == ids
    assert all(set(index.ids()) <= set(ids) for index in library.retriever.indexes.values())
    assert sorted(library.fingerprints.ids()) == ids and sorted(library.atlas.ids) == ids
    return ids


OPENING_STARTER = """
from app.service import LoratlasService, ServiceConfig
print(len(LoratlasService(ServiceConfig(device="cpu")).library.catalog.ids()), flush=True)
"""


@pytest.mark.skipif(not starter_available(), reason="the starter pack is not built")
def test_two_processes_opening_one_new_library_at_once_both_find_every_style(tmp_path,
                                                                              monkeypatch):
    """A server and a CLI command started together on a fresh install both seed the
    library: one waits for the other and finds the styles there."""
    monkeypatch.setenv("LORATLAS_HOME", str(tmp_path / "home"))
    opening = [_run_script(OPENING_STARTER) for _ in range(2)]
    for run in opening:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-2000:]
        assert stdout.split() == [str(len(starter_loras()))]
    library = LoratlasService(ServiceConfig(device="cpu")).library
    assert library.recovered == []  # nothing half-written, no index entry lost
    assert len(_consistent(library)) == len(starter_loras())


def test_what_another_process_adds_is_seen_here_and_survives_this_ones_writes(
        service, files, tiny_pipeline_dir, tmp_path):
    library_dir = tmp_path / "library"
    service.upload([files["style0"]])  # this process has the folder's indexes in memory
    other = _run_script(CRASHING_INGEST, tiny_pipeline_dir, library_dir, files["style1"])
    stdout, stderr = other.communicate(timeout=300)
    assert other.returncode == 0 and "opened" in stdout, stderr[-2000:]
    assert "style-1" in service.library.retriever.indexes["probes"]  # reloaded on next use
    assert "style-1" in service.library.atlas  # and on this process's map
    service.upload([files["style2"]])  # saves this process's indexes over the folder's
    assert _consistent(service.library) == ["style-0", "style-1", "style-2"]
    reopened = _service(tiny_pipeline_dir, library_dir).library
    assert reopened.recovered == []
    assert _consistent(reopened) == ["style-0", "style-1", "style-2"]


@pytest.mark.parametrize("step", ["indexed", "committed"])
def test_a_writer_killed_in_another_process_leaves_this_ones_library_whole(
        step, service, files, tiny_pipeline_dir, tmp_path):
    library_dir = tmp_path / "library"
    service.upload([files["style0"]])
    killed = _run_script(CRASHING_INGEST, tiny_pipeline_dir, library_dir, files["style1"],
                         **{CRASH_ENV: step})
    _, stderr = killed.communicate(timeout=300)
    assert killed.returncode == -9, stderr[-2000:]
    # this process notices on its next use: the other's garbage swept, its commit shown whole
    expected = ["style-0", "style-1"] if step == "committed" else ["style-0"]
    assert _consistent(service.library) == expected
    service.upload([files["style2"]])
    reopened = _service(tiny_pipeline_dir, library_dir).library
    assert reopened.recovered == []
    assert _consistent(reopened) == [*expected, "style-2"]


@pytest.mark.parametrize("step", INGEST_STEPS)
def test_a_crash_at_any_ingest_step_leaves_all_or_nothing(step, tiny_pipeline_dir, files,
                                                         tmp_path):
    library_dir = tmp_path / "library"
    env = {**os.environ, CRASH_ENV: step, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", CRASHING_INGEST, str(tiny_pipeline_dir),
                          str(library_dir), str(files["style2"])], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr[-2000:]
    assert "opened" in run.stdout
    service = _service(tiny_pipeline_dir, library_dir)
    library = service.library  # restart: recovery runs here
    entries = library.catalog.list()
    if step == "committed":
        assert [e.extra["file_name"] for e in entries] == ["style2.safetensors"]
        entry = entries[0]
        assert set(library.blobs.shas()) == {entry.blob, *entry.thumbnails}
        assert all(entry.id in index for index in library.retriever.indexes.values())
        assert entry.id in library.fingerprints and entry.id in library.atlas.ids
    else:
        assert entries == [] and library.blobs.shas() == []
        assert all(len(index) == 0 for index in library.retriever.indexes.values())
        assert len(library.fingerprints) == 0 and library.atlas.ids == []
    # and the library still works: the same file goes in (or is known) after the crash
    report = service.upload([files["style2"]])[0]
    assert report.ok and (report.slug or report.duplicate_of)


def test_frequency_profiles_are_measured_once_and_kept_with_the_style(service, files):
    from app.service import GenerateRequest, LoraRequest

    slugs = [r.slug for r in service.upload([files["style0"], files["style1"]])]
    assert all(service.library.catalog.get(s).frequency is None for s in slugs)
    service.generate(GenerateRequest("a red star", [LoraRequest(s) for s in slugs], steps=2,
                                     mode="gated"))
    stored = [service.library.catalog.get(s).frequency for s in slugs]
    assert all(profile and len(profile) == 16 for profile in stored)
    assert service._use(LoraRequest(slugs[0]), service.engine).frequency == stored[0]


def test_probe_settings_are_part_of_the_cache_key(monkeypatch):
    """Probe vectors and the indexes holding them are keyed by what renders them: changing the
    probe prompts, steps or guidance must not reuse vectors made with the old ones."""
    import app.library as library

    key = library.renders_id("abc", 7.5)
    assert key.startswith("abc-p") and key == library.renders_id("abc", 7.5)
    assert library.renders_id("abc", 2.0) != key  # the guidance scale they render at
    monkeypatch.setattr(library, "PROBE_STEPS", library.PROBE_STEPS + 1)
    assert library.renders_id("abc", 7.5) != key
    monkeypatch.undo()
    monkeypatch.setattr(library, "PROBE_PROMPTS", library.PROBE_PROMPTS[:-1])
    assert library.renders_id("abc", 7.5) != key


def test_a_view_cache_keeps_only_the_files_it_is_told_to(tmp_path):
    import numpy as np

    from app.library import ViewCache

    cache = ViewCache(tmp_path / "views.npz")
    for view in ("probes", "metadata"):
        for sha in ("old", "new"):
            cache.put(view, sha, np.ones(4))
    cache.retain(["new"])
    cache.save()
    again = ViewCache(tmp_path / "views.npz")
    assert sorted(again.vectors) == ["metadata:new", "probes:new"]


@pytest.mark.skipif(not starter_available(), reason="starter pack not built")
def test_the_shipped_view_vectors_are_those_of_the_shipped_loras():
    """A rebuilt pack must not carry the vectors of the LoRA files it replaced."""
    import numpy as np

    from app.starter_retrieval import VIEWS_DIR
    from styles.reader import read_lora

    shas = {read_lora(path).sha256 for path in starter_loras().values()}
    (views,) = VIEWS_DIR.glob("*.npz")
    with np.load(views) as data:
        cached = {key.split(":", 1)[1] for key in data.files}
    assert cached == shas


def test_a_refusal_names_the_file_as_the_user_named_it(service, tmp_path):
    stored = tmp_path / "upload-3f9a.safetensors"  # the temporary name an upload is kept under
    stored.write_bytes(b"\x80\x04\x95junk")
    report = service.upload([stored], names=["my style.safetensors"])[0]
    assert not report.ok and report.file == "my style.safetensors"
    assert report.error["message"].startswith("my style.safetensors: ")
    assert "upload-3f9a" not in report.error["message"]


@pytest.mark.skipif(not starter_available() or not starter_loras(),
                    reason="starter LoRAs not built")
def test_a_seeded_starter_library_is_mapped_from_all_its_styles(tmp_path, monkeypatch):
    """Seeding adds the pack's styles one at a time; the map is then drawn once from all of
    them, not left with the clusters of the first three."""
    monkeypatch.setenv("LORATLAS_HOME", str(tmp_path / "home"))
    library = LoratlasService(ServiceConfig(device="cpu")).library
    styles = len(library.catalog.list())
    assert styles == len(starter_loras())
    assert library.atlas.fitted_on == styles == len(library.atlas.ids)
    # the map and its clusters are those of all the styles at once (seeded one at a time,
    # they would be the first three's: at most two clusters, every later style only placed)
    entries = {e.id: e for e in library.catalog.list()}
    vectors = {i: library.style_vector(i) for i in entries}
    whole = AtlasLayout.fit(vectors, {i: entries[i].tags for i in vectors})
    assert [c.members for c in library.atlas.clusters] == [c.members for c in whole.clusters]
    assert sorted(m for c in library.atlas.clusters for m in c.members) == sorted(entries)
    # every group is named by its members' tags (how many groups the silhouette picks depends
    # on the pack's vectors: benchmarks/results/atlas_clusters.md)
    assert len(library.atlas.clusters) >= 2 and all(c.tags for c in library.atlas.clusters)
    assert len({c.label for c in library.atlas.clusters}) == len(library.atlas.clusters)
