"""Video DiT models in Flax NNX. Self-attention is injected (see :mod:`.attention`); this package imports
only jax, flax, numpy, jaxtyping and the standard library."""

from .attention import AttnFn, dense_attention, masked_dense_attention, sdpa
from .hunyuan_video import HunyuanVideoTransformer3DModel, text_kv_lengths
from .hunyuan_video_blocks import HunyuanVideoSingleTransformerBlock, HunyuanVideoTransformerBlock
from .hunyuan_video_config import HUNYUAN_PRESETS, HunyuanVideoConfig
from .wan import WanAttention, WanTransformer3DModel, WanTransformerBlock
from .wan_config import WAN_PRESETS, WAN_TEXT_LEN, WanConfig

__all__ = [
    "HUNYUAN_PRESETS",
    "WAN_PRESETS",
    "WAN_TEXT_LEN",
    "AttnFn",
    "HunyuanVideoConfig",
    "HunyuanVideoSingleTransformerBlock",
    "HunyuanVideoTransformer3DModel",
    "HunyuanVideoTransformerBlock",
    "WanAttention",
    "WanConfig",
    "WanTransformer3DModel",
    "WanTransformerBlock",
    "dense_attention",
    "masked_dense_attention",
    "sdpa",
    "text_kv_lengths",
]
