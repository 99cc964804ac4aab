"""Test support: a diffusers SD1-style pipeline as one original-LDM (A1111) checkpoint dict.

The inverse of diffusers' single-file loaders, written from the block layout (not copied from
diffusers' conversion script) and general in the number of blocks and layers per block, so the
tiny test pipeline round-trips through `from_single_file`.
"""

from __future__ import annotations

import re

import torch

UNET, VAE, TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."

UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
               "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
               "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                 "to_out.0": "proj_out"}


def to_ldm_checkpoint(pipe) -> dict[str, torch.Tensor]:
    """UNet, VAE and CLIP text encoder of `pipe` under the LDM single-file key names."""
    checkpoint = {}
    for key, tensor in pipe.unet.state_dict().items():
        checkpoint[UNET + _unet_key(key, pipe.unet.config)] = tensor
    for key, tensor in pipe.vae.state_dict().items():
        name, is_attention = _vae_key(key, len(pipe.vae.config.up_block_types))
        if is_attention and tensor.ndim == 2:  # LDM's VAE attention is 1x1 convolutions
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        checkpoint[VAE + name] = tensor
    for key, tensor in pipe.text_encoder.state_dict().items():
        # transformers 5 flattened CLIPTextModel; LDM keeps the `text_model.` level
        checkpoint[TEXT + (key if key.startswith("text_model.") else f"text_model.{key}")] = tensor
    return {key: tensor.detach().contiguous() for key, tensor in checkpoint.items()}


def _unet_key(key: str, config) -> str:
    per_block = config.layers_per_block + 1  # down: L resnets + downsampler; up: L+1 resnets
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = match.groups()
        slot = 1 + int(block) * per_block + int(layer)
        return f"input_blocks.{slot}.{_unet_params(kind, rest)}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(match[1]) + 1) * per_block}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, layer, rest = match.groups()
        slot = 2 * int(layer) if kind == "resnets" else 1
        return f"middle_block.{slot}.{_unet_params(kind, rest, in_slot=False)}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = match.groups()
        slot = int(block) * per_block + int(layer)
        return f"output_blocks.{slot}.{_unet_params(kind, rest)}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        block = int(match[1])
        after = 2 if "CrossAttn" in config.up_block_types[block] else 1  # after resnet(, attn)
        return f"output_blocks.{block * per_block + per_block - 1}.{after}.{match[2]}"
    module, _, param = key.rpartition(".")
    if module in UNET_TOP:
        return f"{UNET_TOP[module]}.{param}"
    raise KeyError(f"UNet key '{key}' has no LDM name (not an SD1-style UNet?)")


def _unet_params(kind: str, rest: str, in_slot: bool = True) -> str:
    """Resnet parameters renamed (SpatialTransformer ones are the same in both layouts); in an
    input/output block slot the resnet is sub-module 0 and the transformer sub-module 1."""
    if kind == "attentions":
        return f"1.{rest}" if in_slot else rest
    module, _, param = rest.partition(".")
    return f"0.{UNET_RESNET[module]}.{param}" if in_slot else f"{UNET_RESNET[module]}.{param}"


def _vae_key(key: str, num_blocks: int) -> tuple[str, bool]:
    """The LDM name, and whether the tensor belongs to the mid-block attention."""
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(\w+)", key):
        side, module, param = match.groups()
        return f"{side}.mid.attn_1.{VAE_ATTENTION[module]}.{param}", True
    key = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets", r"encoder.down.\1.block", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample",
                 key)
    # the decoder's up blocks are numbered from the bottom in LDM
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)",
                 lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}."
                           f"{'block' if m[2] == 'resnets' else 'upsample'}", key)
    key = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    return key, False
