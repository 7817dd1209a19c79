"""Architecture config of Wan 2.1 (`WanConfig`), its named presets, and diffusers ``config.json`` I/O.

Field names are the keys of diffusers' ``WanTransformer3DModel`` ``config.json``, so converted checkpoints
carry their architecture in the same file diffusers uses.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from .diffusers_config import config_args, lookup_preset, to_config_dict
from .rope import rope_axis_dims

# The only qk-norm diffusers implements for Wan: RMSNorm over all heads (dim = heads·head_dim) before the
# head split. diffusers ignores the argument and always builds this norm, so we accept only this value.
QK_NORM_ACROSS_HEADS = "rms_norm_across_heads"

# Number of text tokens Wan's I2V cross-attention expects after the image tokens: diffusers' WanAttnProcessor
# hard-codes 512 (the UMT5 context length) to split the image tokens off the context.
WAN_TEXT_LEN = 512


@dataclasses.dataclass(frozen=True, kw_only=True)
class WanConfig:
    """Wan 2.1 transformer architecture (diffusers ``WanTransformer3DModel`` arguments)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str = QK_NORM_ACROSS_HEADS
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    def __post_init__(self):
        patch = tuple(self.patch_size)
        if len(patch) != 3 or not all(isinstance(p, int) and p >= 1 for p in patch):
            raise ValueError(
                f"WanConfig.patch_size must be 3 positive ints (t, h, w); got {self.patch_size!r}"
            )
        object.__setattr__(self, "patch_size", patch)  # lists from JSON become a hashable tuple
        for name in (
            "num_attention_heads",
            "attention_head_dim",
            "in_channels",
            "out_channels",
            "text_dim",
            "freq_dim",
            "ffn_dim",
            "num_layers",
            "rope_max_seq_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"WanConfig.{name} must be a positive int; got {value!r}")
        for name in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"WanConfig.{name} must be None or a positive int; got {value!r}")
        if self.freq_dim % 2:
            raise ValueError(f"WanConfig.freq_dim must be even; got {self.freq_dim}")
        if any(d % 2 for d in rope_axis_dims(self.attention_head_dim)):
            raise ValueError(
                f"WanConfig.attention_head_dim must split into even RoPE parts (t, h, w) = "
                f"{rope_axis_dims(self.attention_head_dim)}; got attention_head_dim={self.attention_head_dim}"
            )
        if self.qk_norm != QK_NORM_ACROSS_HEADS:
            raise NotImplementedError(
                f"WanConfig.qk_norm must be {QK_NORM_ACROSS_HEADS!r} (the only norm diffusers builds for "
                "Wan); "
                f"got {self.qk_norm!r}"
            )
        if not isinstance(self.eps, float) or self.eps <= 0:
            raise ValueError(f"WanConfig.eps must be a positive float; got {self.eps!r}")
        if self.added_kv_proj_dim is not None:
            if self.image_dim is None:
                raise ValueError(
                    "WanConfig.added_kv_proj_dim needs image_dim (the image tokens feed add_k_proj); "
                    f"got added_kv_proj_dim={self.added_kv_proj_dim}, image_dim=None"
                )
            if self.added_kv_proj_dim != self.inner_dim:
                raise ValueError(
                    f"WanConfig.added_kv_proj_dim must equal num_attention_heads·attention_head_dim = "
                    f"{self.inner_dim} (it projects the embedded image tokens); got {self.added_kv_proj_dim}"
                )
        if self.pos_embed_seq_len is not None and self.image_dim is None:
            raise ValueError(
                "WanConfig.pos_embed_seq_len needs image_dim; got "
                f"pos_embed_seq_len={self.pos_embed_seq_len}, "
                "image_dim=None"
            )

    @property
    def inner_dim(self) -> int:
        """Model width ``E = num_attention_heads · attention_head_dim``."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def is_i2v(self) -> bool:
        """Whether cross-attention has the separate image key/value branch (``add_k_proj``)."""
        return self.added_kv_proj_dim is not None

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any]) -> "WanConfig":
        """Build from diffusers' ``config.json`` dict; keys starting with ``_`` are metadata and ignored."""
        args = config_args(cls, config)
        if args.get("qk_norm") is None:
            args.pop("qk_norm", None)  # diffusers builds the across-heads RMSNorm regardless
        if "eps" in args:
            args["eps"] = float(args["eps"])
        if "patch_size" in args:
            args["patch_size"] = tuple(args["patch_size"])
        return cls(**args)

    def to_diffusers_config(self) -> dict[str, Any]:
        """The dict diffusers writes as ``config.json`` for this architecture."""
        return to_config_dict(self, "WanTransformer3DModel")

    @classmethod
    def preset(cls, name: str) -> "WanConfig":
        """Return a named preset (see ``WAN_PRESETS``)."""
        return lookup_preset(WAN_PRESETS, name, "Wan")


_T2V_14B = WanConfig(num_attention_heads=40, ffn_dim=13824, num_layers=40, in_channels=16)
_I2V_14B = WanConfig(
    num_attention_heads=40,
    ffn_dim=13824,
    num_layers=40,
    in_channels=36,
    image_dim=1280,
    added_kv_proj_dim=5120,
)

# Architectures of the released checkpoints (diffusers scripts/convert_wan_to_diffusers.py). The two I2V
# resolutions share one architecture and differ in weights; FLF2V adds the image position embedding.
WAN_PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(num_attention_heads=12, ffn_dim=8960, num_layers=30, in_channels=16),
    "wan2.1-t2v-14b": _T2V_14B,
    "wan2.1-i2v-14b-480p": _I2V_14B,
    "wan2.1-i2v-14b-720p": _I2V_14B,
    "wan2.1-flf2v-14b-720p": dataclasses.replace(_I2V_14B, pos_embed_seq_len=2 * 257),
}
