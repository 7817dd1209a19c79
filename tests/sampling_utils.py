"""Attention settings and checks the sampling tests of every model family share."""

import jax.numpy as jnp
import numpy as np

from svg_jax import AttentionConfig, SVG1Config, SVG2Config
from svg_jax.sampling import sample

DENSE = AttentionConfig(method="dense")
# Exact sparse settings on the tiny CPU configs (density-1 band; top-p 1 keeps every cluster pair).
SVG1_EXACT = SVG1Config(density=1.0, block_size=16, num_sampled_rows=8, dense_steps=1, dense_layers=1)
SVG2_EXACT = SVG2Config(num_q_clusters=4, num_k_clusters=8, top_p=1.0, min_k_cluster_ratio=0.0,
                        kmeans_init_iters=6, kmeans_warm_iters=2, dense_steps=1, dense_layers=1)  # fmt: skip
# The same at the sizes the compiled GPU kernels take (the default 128-row tiles, D 64).
GPU_EXACT = {
    "svg1": AttentionConfig(method="svg1", svg1=SVG1Config(density=1.0, dense_steps=1, dense_layers=1)),
    "svg2": AttentionConfig(method="svg2", svg2=SVG2Config(
        num_q_clusters=16, num_k_clusters=32, top_p=1.0, min_k_cluster_ratio=0.0, kmeans_init_iters=10,
        kmeans_warm_iters=2, dense_steps=1, dense_layers=1)),
}  # fmt: skip


def assert_compiled_sparse_samples_like_dense(model, method: str, **common) -> None:
    """``sample`` with ``GPU_EXACT[method]`` equals dense sampling (bf16 tolerance), and the method ran in
    layer 1 after the dense warm-up step."""
    dense = sample(model, attention=DENSE, **common)
    sparse = sample(model, attention=GPU_EXACT[method], **common)
    err = float(jnp.linalg.norm(sparse.latents - dense.latents) / jnp.linalg.norm(dense.latents))
    assert err < 2e-2, err
    assert np.asarray(sparse.stats.dense)[1:, :, 1].sum() == 0
