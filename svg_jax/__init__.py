"""svg-jax: Sparse VideoGen (SVG1, SVG2) for video diffusion transformers in JAX.

Axis vocabulary of the shape annotations: ``B`` batch, ``N``/``M`` query/key tokens, ``H`` heads,
``D`` head dim, ``E`` model width, ``T Hp Wp`` latent grid, ``nqb nkb`` query/key blocks,
``Cq Ck`` query/key clusters, ``G`` flattened groups (B·H).
"""

from .layout import TextTokens, VideoLayout

__all__ = ["TextTokens", "VideoLayout"]
