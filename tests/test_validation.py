"""Bad files are refused with a typed reason naming the file; LyCORIS factors are exact."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from styles import errors
from styles.formats import RawModule, exact_factors
from styles.reader import ReadOptions, read_lora
from styles.safe_read import ReadLimits


def _kohya(path, tensors=None, **extra):
    tensors = tensors or {
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
            torch.randn(4, 768),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight":
            torch.randn(1280, 4),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.alpha":
            torch.tensor(2.0),
    }
    save_file({**tensors, **extra}, str(path))
    return path


def test_a_valid_kohya_file_reads(tmp_path):
    lora = read_lora(_kohya(tmp_path / "ok.safetensors"))
    assert (lora.format, lora.family, lora.rank, lora.alpha) == ("kohya", "sd1", 4, 2.0)


@pytest.mark.parametrize("payload", [
    pickle.dumps({"a": 1}, protocol=2), pickle.dumps({"a": 1}, protocol=4),
    b"PK\x03\x04" + b"\0" * 100,
])
def test_pickles_are_refused_by_their_bytes_whatever_the_name(tmp_path, payload):
    path = tmp_path / "innocent.safetensors"
    path.write_bytes(payload)
    with pytest.raises(errors.PickleRefused, match="innocent.safetensors"):
        read_lora(path)


def test_empty_file(tmp_path):
    (tmp_path / "e.safetensors").write_bytes(b"")
    with pytest.raises(errors.EmptyFile, match="e.safetensors.*empty"):
        read_lora(tmp_path / "e.safetensors")


def test_truncated_data_is_refused_though_the_header_parses(tmp_path):
    path = _kohya(tmp_path / "t.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(errors.TruncatedFile, match="cut off"):
        read_lora(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", 500) + b'{"a": ')
    with pytest.raises(errors.TruncatedFile):
        read_lora(path)


def test_header_and_file_size_limits(tmp_path):
    path = _kohya(tmp_path / "big.safetensors")
    with pytest.raises(errors.HeaderTooLarge):
        read_lora(path, ReadOptions(limits=ReadLimits(max_header_bytes=64)))
    with pytest.raises(errors.FileTooLarge, match="limit"):
        read_lora(path, ReadOptions(limits=ReadLimits(max_file_bytes=1000)))


def test_not_json_header(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe\x00\x01" + b"\0" * 10)
    with pytest.raises(errors.NotSafetensors):
        read_lora(path)


def test_nan_tensors(tmp_path):
    bad = torch.randn(1280, 4)
    bad[3, 1] = float("nan")
    path = _kohya(tmp_path / "n.safetensors", {
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
            torch.randn(4, 768),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": bad})
    with pytest.raises(errors.NonFiniteTensor, match="NaN"):
        read_lora(path)


def test_a_full_checkpoint_is_not_a_lora(tmp_path):
    save_file({"model.diffusion_model.out.0.weight": torch.randn(4)}, str(tmp_path / "c.st"))
    with pytest.raises(errors.NotALora):
        read_lora(tmp_path / "c.st")


def test_shapes_that_do_not_fit_the_base(tmp_path):
    path = _kohya(tmp_path / "s.safetensors", {
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
            torch.randn(4, 768),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight":
            torch.randn(640, 4)})
    with pytest.raises(errors.ShapeMismatch, match="640"):
        read_lora(path)


def test_keys_that_map_to_no_module(tmp_path, tiny_base):
    name = "lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn2_to_k"
    path = _kohya(tmp_path / "m.safetensors", {f"{name}.lora_down.weight": torch.randn(4, 768),
                                               f"{name}.lora_up.weight": torch.randn(1280, 4)})
    with pytest.raises(errors.NoMatchingModules, match="m.safetensors"):
        read_lora(path, ReadOptions(base_table=tiny_base.table))


def test_lora_adapter_metadata_alpha(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({"unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight":
               torch.randn(4, 768),
               "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight":
               torch.randn(1280, 4)}, str(path),
              metadata={"lora_adapter_metadata": json.dumps({"unet.r": 4,
                                                             "unet.lora_alpha": 8})})
    lora = read_lora(path)
    assert lora.alpha == 8 and next(iter(lora.modules.values())).scale == 2.0


def test_loha_factors_are_exact():
    g = torch.Generator().manual_seed(0)
    parts = {k: torch.randn(*s, generator=g) for k, s in {
        "hada_w1_a": (12, 3), "hada_w1_b": (3, 20), "hada_w2_a": (12, 2),
        "hada_w2_b": (2, 20)}.items()}
    up, down, rank = exact_factors(RawModule("unet", "x", "flat", parts))
    expected = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"])
    assert rank == 3 and torch.allclose(up @ down, expected, atol=1e-5)


def test_lokr_factors_are_exact():
    g = torch.Generator().manual_seed(1)
    parts = {k: torch.randn(*s, generator=g) for k, s in {
        "lokr_w1_a": (4, 2), "lokr_w1_b": (2, 5), "lokr_w2_a": (6, 2),
        "lokr_w2_b": (2, 7)}.items()}
    up, down, _ = exact_factors(RawModule("unet", "x", "flat", parts))
    expected = torch.kron(parts["lokr_w1_a"] @ parts["lokr_w1_b"],
                          parts["lokr_w2_a"] @ parts["lokr_w2_b"])
    assert torch.allclose(up @ down, expected, atol=1e-5)
    full = {"lokr_w1": torch.randn(3, 4, generator=g), **{k: parts[k] for k in
                                                            ("lokr_w2_a", "lokr_w2_b")}}
    up, down, _ = exact_factors(RawModule("unet", "x", "flat", full))
    expected = torch.kron(full["lokr_w1"], parts["lokr_w2_a"] @ parts["lokr_w2_b"])
    assert torch.allclose(up @ down, expected, atol=1e-5)


def test_a_lora_without_cross_attention_key_value_is_placed_by_its_unet_modules(tmp_path):
    """Style LoRAs that leave attn2.to_k/to_v untrained carry no text width. The starter's
    feed-forward is 768 wide, SD 1.x's text width: the family comes from the module names and
    shapes, not from a width that happens to match."""
    from safetensors.torch import load_file

    from styles.starter.paths import starter_loras

    tensors = load_file(starter_loras()["sepia"])
    kept = {k: v for k, v in tensors.items() if "attn2_to_k" not in k and "attn2_to_v" not in k}
    assert 0 < len(kept) < len(tensors)
    path = tmp_path / "no-text-kv.safetensors"
    save_file(kept, str(path))
    lora = read_lora(path)
    assert lora.family == "starter" and len(lora.modules) == len(read_lora(
        starter_loras()["sepia"]).modules) - (len(tensors) - len(kept)) // 3  # down, up, alpha


def test_a_refusal_survives_pickling_whole():
    """Benchmarks and builds read LoRAs in worker processes: a refusal must cross back."""
    refusal = errors.WrongFamily("a.safetensors", "it is for SDXL.", "Pick a matching LoRA.")
    refusal.details["family"] = "sdxl"
    back = pickle.loads(pickle.dumps(refusal))
    assert type(back) is errors.WrongFamily and str(back) == str(refusal)
    assert back.to_dict() == refusal.to_dict() and back.details == {"family": "sdxl"}
