"""Sparse-attention kernels for svg-jax (Pallas on GPU) and their plain-XLA references."""

from .block_mask import block_mask_to_indices
from .block_sparse_attn import TritonConfig, block_sparse_attention
from .reference import (
    block_indices_to_mask,
    block_sparse_attention_reference,
    cluster_labels,
    cluster_map_to_mask,
    cluster_sparse_attention_reference,
    masked_attention_reference,
)

__all__ = [
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
