"""GPU kernels of svg-jax (Pallas, Triton lowering) and their plain-XLA references.

Every kernel takes ``implementation`` ∈ {"auto", "xla", "pallas_triton"}: "auto" is the Pallas kernel on
a GPU and the XLA reference on CPU; "pallas_triton" runs on CPU with ``interpret=True`` (the tests).
"""

from .block_mask import block_mask_to_indices
from .block_sparse_attn import block_sparse_attention
from .cluster_plan import ClusterTilePlan, cluster_tile_plan
from .cluster_sparse_attn import (
    cluster_plan_for,
    cluster_sparse_attention,
    cluster_sparse_attention_from_plan,
    padded_rows,
)
from .common import TritonConfig
from .kmeans import KMeansAssignConfig, kmeans_assign
from .kmeans_reference import kmeans_assign_reference
from .kmeans_update import ClusterSumsConfig, cluster_sums, cluster_sums_reference
from .permute import PermuteConfig, permute_tokens, permute_tokens_reference
from .qk_norm_rope import QKNormRopeConfig, qk_norm_rope, qk_norm_rope_reference
from .reference import (
    block_indices_to_mask,
    block_sparse_attention_reference,
    cluster_labels,
    cluster_map_to_mask,
    cluster_sparse_attention_reference,
    masked_attention_reference,
    padding_key_mask,
)
from .top_p import TopPConfig, top_p_mask, top_p_mask_reference

__all__ = [
    "ClusterSumsConfig",
    "ClusterTilePlan",
    "KMeansAssignConfig",
    "PermuteConfig",
    "QKNormRopeConfig",
    "TopPConfig",
    "TritonConfig",
    "block_indices_to_mask",
    "block_mask_to_indices",
    "block_sparse_attention",
    "block_sparse_attention_reference",
    "cluster_labels",
    "cluster_map_to_mask",
    "cluster_plan_for",
    "cluster_sparse_attention",
    "cluster_sparse_attention_from_plan",
    "cluster_sparse_attention_reference",
    "cluster_sums",
    "cluster_sums_reference",
    "cluster_tile_plan",
    "kmeans_assign",
    "kmeans_assign_reference",
    "masked_attention_reference",
    "padded_rows",
    "padding_key_mask",
    "permute_tokens",
    "permute_tokens_reference",
    "qk_norm_rope",
    "qk_norm_rope_reference",
    "top_p_mask",
    "top_p_mask_reference",
]
