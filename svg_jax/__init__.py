"""svg-jax: Sparse VideoGen (SVG1, SVG2) for video diffusion transformers in JAX.

Axis vocabulary of the shape annotations: ``B`` batch, ``N``/``M`` query/key tokens, ``H`` heads,
``D`` head dim, ``E`` model width, ``T Hp Wp`` latent grid, ``nqb nkb`` query/key blocks,
``Cq Ck`` query/key clusters, ``G`` flattened groups (B·H).
"""

from .attention import (
    AttentionConfig,
    AttentionState,
    AttentionStats,
    init_attention_state,
    make_attn_fn,
)
from .kmeans import KMeansResult, kmeans
from .layout import TextTokens, VideoLayout
from .svg1 import SVG1Config, SVG1Stats, svg1_attention
from .svg2 import SVG2Cache, SVG2Config, SVG2Stats, svg2_attention

__all__ = [
    "AttentionConfig",
    "AttentionState",
    "AttentionStats",
    "HunyuanPrompt",
    "KMeansResult",
    "SVG1Config",
    "SVG1Stats",
    "SVG2Cache",
    "SVG2Config",
    "SVG2Stats",
    "TextTokens",
    "VideoLayout",
    "init_attention_state",
    "kmeans",
    "load",
    "make_attn_fn",
    "svg1_attention",
    "svg2_attention",
]


def __getattr__(name: str):
    # `load` pulls in the model ports (flax); import it on first use so the method layer stays light.
    if name == "load":
        from .loading import load

        return load
    if name == "HunyuanPrompt":
        from .denoisers import HunyuanPrompt

        return HunyuanPrompt
    raise AttributeError(f"module 'svg_jax' has no attribute {name!r}")
