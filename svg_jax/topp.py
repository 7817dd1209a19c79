"""SVG2's cluster-pair selection: size-weighted centroid attention, top-p per query cluster, text clusters.

All functions are jnp only and batch over any leading axes (``B H`` in practice).
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from svg_jax.pallas_kernels import top_p_mask


def cluster_probabilities(
    q_centroids: Float[Array, "*G Cq D"],
    k_centroids: Float[Array, "*G Ck D"],
    k_sizes: Int[Array, "*G Ck"],
    *,
    sm_scale: float,
) -> Float[Array, "*G Cq Ck"]:
    """Estimated attention mass of every key cluster for every query cluster (rows sum to 1).

    SVG2 §2.1.3: ``P_ij ∝ n_j · exp(S_ij)`` with ``S = Cq·Ckᵀ·sm_scale``, i.e. ``softmax(S + log n_k)``;
    an empty key cluster gets exactly 0.
    """
    s = (
        jnp.einsum(
            "...id,...jd->...ij",
            q_centroids.astype(jnp.float32),
            k_centroids.astype(jnp.float32),
            precision=jax.lax.Precision.HIGHEST,
        )
        * sm_scale
    )  # [*G, Cq, Ck]
    log_n = jnp.where(k_sizes > 0, jnp.log(jnp.maximum(k_sizes, 1).astype(jnp.float32)), -jnp.inf)
    return jax.nn.softmax(s + log_n[..., None, :], axis=-1)


def top_p_cluster_map(
    probs: Float[Array, "*G Cq Ck"],
    *,
    top_p: float,
    min_clusters: int = 0,
    k_sizes: Int[Array, "*G Ck"] | None = None,
    min_tokens: float = 0.0,
    implementation: str = "auto",
    interpret: bool | None = None,
) -> Bool[Array, "*G Cq Ck"]:
    """Per query cluster, the most probable key clusters until their mass first exceeds ``top_p``.

    Official semantics (SVG2 ``identify_dynamic_map``): sort a row descending and keep every cluster whose
    *preceding* cumulative mass is ``<= top_p``, so the cluster that crosses ``top_p`` is included and the
    most probable one is always kept. The ``min_clusters`` most probable clusters are kept regardless
    (the ``min_k_cluster_ratio`` floor), and with the key cluster sizes ``k_sizes`` given, the most probable
    until they hold at least ``min_tokens`` key tokens (the ``min_k_token_ratio`` floor, not official).
    ``top_p >= 1`` keeps everything. Ties sort by lower index.
    On a GPU this runs :func:`~svg_jax.pallas_kernels.top_p_mask`'s threshold search instead of a sort
    (``implementation``/``interpret`` pick the path; see there for float32 rounding at the boundary).
    """
    if top_p >= 1.0:  # dense, even where rounding puts a row's mass a hair above 1
        return jnp.ones(probs.shape, jnp.bool_)
    return top_p_mask(
        probs,
        top_p=top_p,
        min_clusters=min_clusters,
        weights=None if k_sizes is None else k_sizes[..., None, :],  # one row of sizes per query cluster
        min_weight=min_tokens,
        implementation=implementation,
        interpret=interpret,
    )


def selected_mass(
    probs: Float[Array, "*G Cq Ck"], cluster_map: Bool[Array, "*G Cq Ck"]
) -> Float[Array, "*G Cq"]:
    """Estimated attention mass each query cluster keeps (the centroid-level recall)."""
    return jnp.sum(jnp.where(cluster_map, probs, 0.0), axis=-1)


def add_text_clusters(cluster_map: Bool[Array, "*G Cq Ck"]) -> Bool[Array, "*G Cq2 Ck2"]:
    """Append the two text pseudo-clusters, prompt then padding, to both axes (SVG2 §2.3).

    Video clusters and the prompt attend the prompt keys; the prompt attends every video cluster and
    the prompt; padding attends only padding. Video-to-video entries are ``cluster_map``'s.
    """
    cq, ck = cluster_map.shape[-2:]
    lead = [(0, 0)] * (cluster_map.ndim - 2)
    m = jnp.pad(cluster_map, lead + [(0, 2), (0, 2)])  # [*G, Cq+2, Ck+2]
    m = m.at[..., : cq + 1, ck].set(True)  # video clusters + prompt -> prompt keys
    m = m.at[..., cq, : ck + 1].set(True)  # prompt -> all video clusters + prompt
    return m.at[..., cq + 1, ck + 1].set(True)  # padding -> padding only
