"""The tiny Wan configs shared by the model and dispatch tests (diffusers' own Wan test config)."""

import dataclasses

from svg_jax.models import WanConfig

TINY = WanConfig(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    rope_max_seq_len=32,
)
TINY_I2V = dataclasses.replace(TINY, in_channels=36, out_channels=16, image_dim=8, added_kv_proj_dim=24)
