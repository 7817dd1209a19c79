"""Sparse-attention kernels for svg-jax (Pallas on GPU) and their plain-XLA references."""

from .block_mask import block_mask_to_indices
from .block_sparse_attn import TritonConfig, block_sparse_attention
from .cluster_plan import ClusterTilePlan, cluster_tile_plan
from .cluster_sparse_attn import cluster_sparse_attention, cluster_sparse_attention_from_plan
from .reference import (
    block_indices_to_mask,
    block_sparse_attention_reference,
    cluster_labels,
    cluster_map_to_mask,
    cluster_sparse_attention_reference,
    masked_attention_reference,
)

__all__ = [
    "ClusterTilePlan",
    "cluster_sparse_attention",
    "cluster_sparse_attention_from_plan",
    "cluster_tile_plan",
    "TritonConfig",
    "block_indices_to_mask",
    "block_mask_to_indices",
    "block_sparse_attention",
    "block_sparse_attention_reference",
    "cluster_labels",
    "cluster_map_to_mask",
    "cluster_sparse_attention_reference",
    "masked_attention_reference",
]

# k-means assignment kernel (issue #3).
from .kmeans import KMeansAssignConfig, kmeans_assign  # noqa: E402
from .kmeans_reference import kmeans_assign_reference  # noqa: E402

__all__ += ["KMeansAssignConfig", "kmeans_assign", "kmeans_assign_reference"]

# SVG1 token permutation and fused QK-norm + RoPE (issue #4).
from .permute import PermuteConfig, permute_tokens, permute_tokens_reference  # noqa: E402
from .qk_norm_rope import QKNormRopeConfig, qk_norm_rope, qk_norm_rope_reference  # noqa: E402

__all__ += [
    "PermuteConfig",
    "QKNormRopeConfig",
    "permute_tokens",
    "permute_tokens_reference",
    "qk_norm_rope",
    "qk_norm_rope_reference",
]
