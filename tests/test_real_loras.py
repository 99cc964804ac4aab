"""Every real-world fixture gives the result its README table says."""

from __future__ import annotations

import pytest
import torch

from app.service import LoratlasService, ServiceConfig
from styles.errors import WrongFamily
from styles.reader import ReadOptions, read_lora
from tests.conftest import fixtures_dir

FIXTURES = fixtures_dir()
pytestmark = pytest.mark.skipif(FIXTURES is None, reason="shared/fixtures/real_loras not found")

# file, ok, format, family, rank, alpha, dtype, modules, error code
CASES = [
    ("wellCh4n__pokemon-diffusers__pytorch_lora_weights.safetensors",
     True, "diffusers-attn-processor", "sd1", 4, None, "F32", 128, None),
    ("Krishna4311__Cloud-LoRA-Object-Removal__pytorch_lora_weights.safetensors",
     True, "diffusers", "sd1", 4, None, "F32", 128, None),
    ("JustinJiangNext__lora-2.0__pytorch_lora_weights.safetensors",
     True, "diffusers", "sd2", 4, None, "F32", 128, None),
    ("FaithSang__anime-lora-gnerator__adapter_model.safetensors",
     True, "peft", "sd1", 4, None, "F32", 96, None),
    ("cloneofsimo__lora__analog_svd_rank4.safetensors",
     True, "cloneofsimo", "sd1", 4, None, "F16", 192, None),
    ("KohakuBlueleaf__LyCORIS__smart_falcon_4_lokr.safetensors",
     True, "lycoris-lokr", "sd1", 4, 4.0, "F16", 350, None),
    ("leighwoods__public-loras__lora.safetensors",
     True, "diffusers-peft", "flux", 16, None, "F16", 4, None),
    ("Harshad071__Synthetic-image-and-caption-generator__adapter_model.safetensors",
     False, "peft", "not-image", None, None, None, 0, "not-image"),
    ("broken/Srikanth1408__Stable_Diffusion-Hackathon__pytorch_lora_weights.safetensors",
     False, None, None, None, None, None, 0, "truncated"),
    ("pickles/catundchat__stable-diffusion-v1.5-lora__pytorch_lora_weights.bin",
     False, "pickle", None, None, None, None, 0, "pickle"),
]


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> LoratlasService:
    return LoratlasService(ServiceConfig(library=str(tmp_path_factory.mktemp("lib"))))


@pytest.mark.parametrize(("name", "ok", "fmt", "family", "rank", "alpha", "dtype", "modules",
                          "code"), CASES, ids=[c[0].split("__")[0] for c in CASES])
def test_fixture_inspects_as_its_table_says(service, name, ok, fmt, family, rank, alpha, dtype,
                                            modules, code):
    result = service.inspect(FIXTURES / name)
    assert result.ok is ok, result.errors
    assert (result.format, result.family) == (fmt, family)
    assert (result.rank, result.alpha, result.dtype, result.modules) == (rank, alpha, dtype,
                                                                         modules)
    if code:
        error = result.errors[0]
        assert error["code"] == code
        assert name.split("/")[-1] in error["message"]  # names the file
        assert error["advice"]  # says what to do


def test_sd2_lora_is_refused_on_an_sd1_base():
    with pytest.raises(WrongFamily, match="Stable Diffusion 2.x.*Stable Diffusion 1.x"):
        read_lora(FIXTURES / CASES[2][0], ReadOptions(base_family="sd1"))


def test_without_cross_attention_key_value_the_family_is_named_only_when_one_fits(tmp_path):
    """Drop attn2.to_k/to_v (where the text width shows): an attention-only SD 1.x LoRA then
    fits SD 1.x and 2.x alike and is called unknown, not guessed; LyCORIS's text-encoder
    modules still tell SD 1.x."""
    from safetensors.torch import load_file, save_file

    found = {}
    for name in ("Krishna4311__Cloud-LoRA-Object-Removal__pytorch_lora_weights.safetensors",
                 "KohakuBlueleaf__LyCORIS__smart_falcon_4_lokr.safetensors"):
        tensors = load_file(FIXTURES / name)
        kept = {k: v for k, v in tensors.items()
                if not any(part in k.replace("_", ".") for part in ("attn2.to.k", "attn2.to.v"))}
        assert len(kept) < len(tensors)
        save_file(kept, str(tmp_path / name))
        found[name.split("__")[0]] = detected(tmp_path / name)
    assert found["Krishna4311"] == ("unknown", True)
    stripped = read_lora(tmp_path / "Krishna4311__Cloud-LoRA-Object-Removal__pytorch_lora_weights"
                         ".safetensors")
    assert any("alike" in w for w in stripped.warnings)  # the user is told why it is unknown
    assert found["KohakuBlueleaf"] == ("sd1", False)


def detected(path) -> tuple[str, bool]:
    """(family, whether the evidence says two families fit alike)."""
    from styles.families import detect_family
    from styles.formats import parse_keys
    from styles.safe_read import read_safetensors

    content = read_safetensors(path)
    family, evidence = detect_family(parse_keys(content.tensors, content.metadata))
    return family, "Stable Diffusion 1.x and Stable Diffusion 2.x alike" in evidence


def test_flux_metadata_claim_is_overruled_by_the_tensors():
    lora = read_lora(FIXTURES / "leighwoods__public-loras__lora.safetensors")
    assert lora.family == "flux" and lora.metadata.family_hint == "sd1"
    assert any("tensors decide" in w for w in lora.warnings)


def test_user_alpha_for_peft_file_without_its_config():
    name = "FaithSang__anime-lora-gnerator__adapter_model.safetensors"
    plain = read_lora(FIXTURES / name)
    given = read_lora(FIXTURES / name, ReadOptions(alpha=16))
    target = next(iter(plain.modules))
    assert plain.modules[target].scale == 1.0 and given.modules[target].scale == 4.0
    assert torch.allclose(given.modules[target].delta(), 4 * plain.modules[target].delta())


def test_sibling_adapter_config_supplies_alpha(tmp_path):
    name = "FaithSang__anime-lora-gnerator__adapter_model.safetensors"
    (tmp_path / "adapter_model.safetensors").write_bytes((FIXTURES / name).read_bytes())
    (tmp_path / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 16}')
    lora = read_lora(tmp_path / "adapter_model.safetensors")
    assert lora.alpha == 16 and next(iter(lora.modules.values())).scale == 4.0


def test_kohya_lokr_metadata_and_conv_deltas():
    lora = read_lora(FIXTURES / "KohakuBlueleaf__LyCORIS__smart_falcon_4_lokr.safetensors")
    assert lora.metadata.name == "smart_falcon_lokr_3.0e-4"
    assert "hair bow" in lora.metadata.tags
    conv = lora.modules["unet.down_blocks.0.resnets.0.conv1"]
    assert conv.kind == "conv" and conv.delta().shape == (320, 320, 3, 3)
    te = [t for t in lora.modules if t.startswith("text_encoder.")]
    assert te and all(".layers." in t for t in te)


def test_cloneofsimo_indices_resolve_to_the_legacy_module_order():
    lora = read_lora(FIXTURES / "cloneofsimo__lora__analog_svd_rank4.safetensors")
    geglu = [t for t in lora.modules if t.endswith("ff.net.0.proj")]
    assert len(geglu) == 16
    to_k = lora.modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"]
    assert to_k.in_features == 768
