"""HunyuanVideo T2V architecture config (`HunyuanVideoConfig`), its preset, and diffusers ``config.json`` I/O.

Field names are the keys of diffusers' ``HunyuanVideoTransformer3DModel`` ``config.json``.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from .diffusers_config import config_args, lookup_preset, to_config_dict

# The only qk-norm HunyuanVideo uses: RMSNorm per head (dim = attention_head_dim), eps 1e-6.
QK_NORM_PER_HEAD = "rms_norm"

# Width of the timestep / guidance sinusoid (diffusers ``Timesteps(num_channels=256)``, hard-coded there).
TIMESTEP_FREQ_DIM = 256

# eps of every LayerNorm, AdaLayerNorm and qk RMSNorm of the model (hard-coded in diffusers).
EPS = 1e-6


@dataclasses.dataclass(frozen=True, kw_only=True)
class HunyuanVideoConfig:
    """HunyuanVideo transformer architecture (diffusers ``HunyuanVideoTransformer3DModel`` arguments).

    The defaults are the released T2V model (``HYVideo-T/2-cfgdistill``).
    """

    in_channels: int = 16
    out_channels: int = 16
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 20
    num_single_layers: int = 40
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 2
    patch_size_t: int = 1
    qk_norm: str = QK_NORM_PER_HEAD
    guidance_embeds: bool = True
    text_embed_dim: int = 4096
    pooled_projection_dim: int = 768
    rope_theta: float = 256.0
    rope_axes_dim: tuple[int, int, int] = (16, 56, 56)
    image_condition_type: str | None = None

    def __post_init__(self):
        for name in (
            "in_channels",
            "out_channels",
            "num_attention_heads",
            "attention_head_dim",
            "num_layers",
            "num_single_layers",
            "num_refiner_layers",
            "patch_size",
            "patch_size_t",
            "text_embed_dim",
            "pooled_projection_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"HunyuanVideoConfig.{name} must be a positive int; got {value!r}")
        axes = tuple(self.rope_axes_dim)
        if len(axes) != 3 or not all(isinstance(d, int) and d >= 2 and d % 2 == 0 for d in axes):
            raise ValueError(
                f"HunyuanVideoConfig.rope_axes_dim must be 3 positive even ints (t, h, w); got "
                f"{self.rope_axes_dim!r}"
            )
        object.__setattr__(self, "rope_axes_dim", axes)  # lists from JSON become a hashable tuple
        if sum(axes) != self.attention_head_dim:
            raise ValueError(
                f"HunyuanVideoConfig.rope_axes_dim must sum to attention_head_dim={self.attention_head_dim} "
                f"(RoPE rotates the whole head); got {axes} (sum {sum(axes)})"
            )
        if (
            isinstance(self.mlp_ratio, bool)
            or not isinstance(self.mlp_ratio, int | float)
            or self.mlp_ratio <= 0
        ):
            raise ValueError(
                f"HunyuanVideoConfig.mlp_ratio must be a positive number; got {self.mlp_ratio!r}"
            )
        if self.mlp_dim < 1:
            raise ValueError(
                f"HunyuanVideoConfig.mlp_ratio={self.mlp_ratio} gives an empty MLP (int(inner_dim·mlp_ratio) "
                f"= {self.mlp_dim})"
            )
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, int | float):
            raise ValueError(f"HunyuanVideoConfig.rope_theta must be a number; got {self.rope_theta!r}")
        if self.rope_theta <= 1:
            raise ValueError(f"HunyuanVideoConfig.rope_theta must be > 1; got {self.rope_theta!r}")
        if not isinstance(self.guidance_embeds, bool):
            raise ValueError(
                f"HunyuanVideoConfig.guidance_embeds must be a bool; got {self.guidance_embeds!r}"
            )
        if self.qk_norm != QK_NORM_PER_HEAD:
            raise NotImplementedError(
                f"HunyuanVideoConfig.qk_norm must be {QK_NORM_PER_HEAD!r} (per-head RMSNorm, the only norm "
                f"the released models use); got {self.qk_norm!r}"
            )
        if self.image_condition_type is not None:
            raise NotImplementedError(
                "HunyuanVideoConfig.image_condition_type must be None: only the T2V model is ported "
                f"(HunyuanVideo-I2V's 'latent_concat' / 'token_replace' are not); got "
                f"{self.image_condition_type!r}"
            )

    @property
    def inner_dim(self) -> int:
        """Model width ``E = num_attention_heads · attention_head_dim``."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_dim(self) -> int:
        """Hidden width of the block MLPs, ``int(inner_dim · mlp_ratio)`` as diffusers computes it."""
        return int(self.inner_dim * self.mlp_ratio)

    @property
    def num_attention_layers(self) -> int:
        """Blocks whose joint attention is injected: double-stream then single-stream."""
        return self.num_layers + self.num_single_layers

    @property
    def patch_sizes(self) -> tuple[int, int, int]:
        """``(t, h, w)`` patch of the Conv3d patch embedding."""
        return (self.patch_size_t, self.patch_size, self.patch_size)

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any]) -> "HunyuanVideoConfig":
        """Build from diffusers' ``config.json`` dict; keys starting with ``_`` are metadata and ignored."""
        args = config_args(cls, config)
        if "rope_axes_dim" in args:
            args["rope_axes_dim"] = tuple(args["rope_axes_dim"])
        for name in ("mlp_ratio", "rope_theta"):
            if isinstance(args.get(name), int) and not isinstance(args[name], bool):
                args[name] = float(args[name])
        return cls(**args)

    def to_diffusers_config(self) -> dict[str, Any]:
        """The dict diffusers writes as ``config.json`` for this architecture."""
        return to_config_dict(self, "HunyuanVideoTransformer3DModel")

    @classmethod
    def preset(cls, name: str) -> "HunyuanVideoConfig":
        """Return a named preset (see ``HUNYUAN_PRESETS``)."""
        return lookup_preset(HUNYUAN_PRESETS, name, "HunyuanVideo")


# Architecture of the released checkpoint (hunyuanvideo-community/HunyuanVideo, diffusers defaults).
HUNYUAN_PRESETS: dict[str, HunyuanVideoConfig] = {
    "hunyuanvideo-t2v": HunyuanVideoConfig(),
}
