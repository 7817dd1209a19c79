"""Video DiT models in Flax NNX. Self-attention is injected (see :mod:`.attention`); this package imports
only jax, flax, numpy, jaxtyping and the standard library."""

from .attention import AttnFn, dense_attention, sdpa
from .wan import WanAttention, WanTransformer3DModel, WanTransformerBlock
from .wan_config import WAN_PRESETS, WAN_TEXT_LEN, WanConfig

__all__ = [
    "WAN_PRESETS",
    "WAN_TEXT_LEN",
    "AttnFn",
    "WanAttention",
    "WanConfig",
    "WanTransformer3DModel",
    "WanTransformerBlock",
    "dense_attention",
    "sdpa",
]
