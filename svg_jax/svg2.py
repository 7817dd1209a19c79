"""SVG2 (Sparse VideoGen2): semantic-aware permutation + cluster-sparse attention for one layer.

Per (batch, head), the video tokens' queries and keys are clustered by k-means (cold on a layer's first
call, warm-started from that layer's cached centroids afterwards), tokens are sorted by cluster so that
each cluster is contiguous, the importance of every (query cluster, key cluster) pair is estimated from
the centroids, each query cluster keeps the smallest prefix of key clusters whose estimated mass reaches
``top_p``, and :func:`svg_jax.pallas_kernels.cluster_sparse_attention` computes exact attention over the
selected pairs. The output is un-permuted. Everything is traceable: no host synchronisation.

Reference: svg-project/Sparse-VideoGen ``svg/models/*/attention.py`` (``*_SAPAttn_Processor``) and
``svg/kmeans_utils.py``; see ``svg_methods.md`` §2.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from svg_jax.cluster_layout import inverse_permutation, regroup, relabel, reorder, reorder_map, seriate
from svg_jax.kmeans import KMeansResult, kmeans
from svg_jax.layout import TextTokens
from svg_jax.pallas_kernels import (
    ClusterTilePlan,
    checks,
    cluster_plan_for,
    cluster_sparse_attention_from_plan,
    cluster_sparse_attention_reference,
    padded_rows,
    permute_tokens,
)
from svg_jax.pallas_kernels.page_plan import default_page_width, page_plan, paged_cost, with_complete_pages
from svg_jax.pallas_kernels.paged_sparse_attn_mosaic import paged_sparse_attention_mosaic
from svg_jax.pallas_kernels.tile_aligned import (
    AlignedQueries,
    align_query_clusters,
    aligned_cost,
    fixed_cost,
    retile_aligned,
)
from svg_jax.topp import add_text_clusters, cluster_probabilities, selected_mass, top_p_cluster_map

# flash-kmeans as vendored by SVG2 stops when no centroid moves by more than this (L2).
KMEANS_TOL = 1e-4
QUERY_TILES = ("auto", "fixed", "aligned", "paged")
# What SVG2Stats.query_tiling counts: the tiling a call ran, as an index into this tuple.
QUERY_TILINGS = ("fixed", "aligned", "paged")
# What a chunk that takes a mask (a run's edge or a mixed chunk) costs the Mosaic kernel beyond one that
# does not, in unmasked chunks: about 12.0 against 7.5 us per thousand chunks at Wan 720p on the H100
# (benchmarks/query_tiles.py). query_tiles="auto" weighs masked chunks by it (the Triton kernel's masked
# chunks were not measured apart; it uses the same weight).
MASKED_CHUNK_WEIGHT = 0.6
# The same for the aligned plan's masked chunks (a run's edges), which the Mosaic kernel masks by one column
# bias (cluster_sparse_attn_mosaic.edge_mask): about 1.1 us per thousand over 7.5 at Wan 720p on the H100,
# random maps at density 0.13 and 0.3 (benchmarks/query_tiles.py, query_tiles_paged_h100_2026-12-07.json).
ALIGNED_EDGE_WEIGHT = 0.15
# The paged kernel's key tiles of 16-row pages in the same units (page_plan.paged_cost): an unmasked one
# costs about 8.3 us per thousand (1.11 of 7.5), one with an invalid column about 1.05 more (0.14). Counted
# on the built plans of the three problems of benchmarks/query_tiles.py with these weights, the work gives
# the measured kernel times at 7.42-7.53 us per unit for the aligned (edge mask) and paged kernels and at
# 7.56-8.10 for the fixed one (H100), so "auto" compares the three tilings by them on the Mosaic path.
PAGED_TILE_WEIGHT = 1.11
# Whether the aligned and paged tilings run a query tile with at most 64 real rows (a cluster's last) on one
# warpgroup (tile_rows of the Mosaic kernels). Off: not yet timed (benchmarks/mosaic_steps.py, variant
# 1,4,1,0,1 of the aligned and paged problems).
HALF_TILES = False
PAGED_PARTIAL_WEIGHT = 0.14


@dataclasses.dataclass(frozen=True, kw_only=True)
class SVG2Config:
    """SVG2 method hyperparameters (names of issue #3; official CLI flags in comments)."""

    num_q_clusters: int  # --num_q_centroids
    num_k_clusters: int  # --num_k_centroids
    top_p: float  # --top_p_kmeans: estimated attention mass kept per query cluster, in (0, 1]
    min_k_cluster_ratio: float  # --min_kc_ratio: floor of int(ratio · num_k_clusters) key clusters
    kmeans_init_iters: int  # --kmeans_iter_init: cold-start Lloyd iterations
    kmeans_warm_iters: int  # --kmeans_iter_step: warm-start iterations on later calls
    dense_steps: int  # denoising steps run dense first (floor(first_times_fp · steps))
    dense_layers: int  # layers always run dense (floor(first_layers_fp · layers))
    # Not an official flag: per query cluster, also keep the most probable key clusters until they hold
    # this share of the video key tokens (a floor like min_k_cluster_ratio, counted in tokens). With
    # top_p near 0 it fixes the density: the speed-curve settings of benchmarks/e2e.py. 0 is off.
    min_k_token_ratio: float = 0.0
    # Not an official flag: barycentre sweeps ordering the clusters so that selected pairs are contiguous
    # (svg_jax.cluster_layout). Same attention, fewer kernel chunks; 0 keeps the official label order.
    layout_sweeps: int = 2
    # Not an official flag: how the attention kernel tiles the cluster-sorted queries. "fixed": tiles cut
    # across cluster boundaries (a tile spanning two query clusters computes the union of their
    # selections, masked where they differ); "aligned": each query cluster padded to whole tiles of its
    # own (pallas_kernels.tile_aligned); "paged" (Mosaic kernel only): aligned tiles whose key tiles are
    # assembled from 16-row pages (pallas_kernels.page_plan), so runs of selected key clusters are computed
    # to the nearest page instead of the nearest key tile: 9% faster than "aligned" on random maps, 10%
    # slower on structured ones (Wan 720p, H100); "auto": per call, whichever of those the work estimates
    # favour (query_tiling_costs; "paged" only on the Mosaic path).
    query_tiles: str = "auto"

    def __post_init__(self):
        for name in ("num_q_clusters", "num_k_clusters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SVG2Config.{name} must be an int >= 1; got {value!r}")
        for name in (
            "kmeans_init_iters",
            "kmeans_warm_iters",
            "dense_steps",
            "dense_layers",
            "layout_sweeps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SVG2Config.{name} must be an int >= 0; got {value!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SVG2Config.top_p must be a float in (0, 1]; got {self.top_p!r}")
        if self.query_tiles not in QUERY_TILES:
            raise ValueError(f"SVG2Config.query_tiles must be one of {QUERY_TILES}; got {self.query_tiles!r}")
        for name in ("min_k_cluster_ratio", "min_k_token_ratio"):
            ratio = getattr(self, name)
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
                raise ValueError(f"SVG2Config.{name} must be a float in [0, 1]; got {ratio!r}")

    @property
    def min_k_clusters(self) -> int:
        """Key clusters always kept per query cluster (official: ``int(min_kc_ratio · kc)``)."""
        return int(self.min_k_cluster_ratio * self.num_k_clusters)

    def is_dense(self, step: int, layer: int) -> bool:
        """Static schedule: the first ``dense_steps`` steps and ``dense_layers`` layers run dense."""
        return step < self.dense_steps or layer < self.dense_layers

    def check_num_tokens(self, num_video_tokens: int) -> None:
        """Clusters cannot outnumber the video tokens they partition."""
        for name in ("num_q_clusters", "num_k_clusters"):
            value = getattr(self, name)
            if value > num_video_tokens:
                raise ValueError(
                    f"SVG2Config.{name}={value} exceeds the {num_video_tokens} video tokens to cluster; "
                    f"use at most {num_video_tokens}"
                )


def _official(qc: int, kc: int, dense_steps: int, dense_layers: int) -> SVG2Config:
    # Every official *_sap.sh script: top_p 0.9, min_kc_ratio 0.10, 50 init / 2 warm iterations.
    return SVG2Config(
        num_q_clusters=qc,
        num_k_clusters=kc,
        top_p=0.9,
        min_k_cluster_ratio=0.10,
        kmeans_init_iters=50,
        kmeans_warm_iters=2,
        dense_steps=dense_steps,
        dense_layers=dense_layers,
    )


# scripts/*/…_sap.sh of Sparse-VideoGen 5ce7b01 (svg_methods.md §2.4); dense counts at the scripts' steps.
WAN21_T2V_720P = _official(300, 1000, dense_steps=10, dense_layers=1)  # 0.2·50, 0.03·40
WAN21_I2V_720P = _official(300, 1000, dense_steps=14, dense_layers=1)  # 0.35·40, 1 layer
WAN21_I2V_480P = _official(200, 1000, dense_steps=8, dense_layers=1)  # 0.2·40, 1 layer
HUNYUAN_T2V_720P = _official(400, 1000, dense_steps=5, dense_layers=1)  # 0.1·50, 0.03·60
HUNYUAN_T2V_480P = _official(200, 1000, dense_steps=2, dense_layers=0)  # 0.04·50, 0
# Not an official script: both official 480p scripts use 200 query clusters, and the T2V 720p script's
# schedule (0.2 of 50 steps, 0.03 of 40 layers) carries over unchanged.
WAN21_T2V_480P = _official(200, 1000, dense_steps=10, dense_layers=1)

PRESETS: dict[str, SVG2Config] = {
    "wan2.1-t2v-14b-720p": WAN21_T2V_720P,
    "wan2.1-t2v-14b-480p": WAN21_T2V_480P,
    "wan2.1-i2v-14b-720p": WAN21_I2V_720P,
    "wan2.1-i2v-14b-480p": WAN21_I2V_480P,
    "hunyuanvideo-t2v-720p": HUNYUAN_T2V_720P,
    "hunyuanvideo-t2v-480p": HUNYUAN_T2V_480P,
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVG2Cache:
    """Per-layer k-means centroids carried from call to call (and shared by the CFG passes).

    Created stacked over layers (leading ``L`` axis); :meth:`layer` gives the slice one
    :func:`svg2_attention` call takes, and a ``lax.scan`` over layers slices it the same way.
    """

    q_centroids: Float[Array, "*L B H Cq D"]  # float32 query centroids
    k_centroids: Float[Array, "*L B H Ck D"]  # float32 key centroids
    warm: Bool[Array, "*L"]  # True once the layer's centroids come from a k-means run

    @classmethod
    def create(
        cls, num_layers: int, batch: int, heads: int, config: SVG2Config, head_dim: int
    ) -> "SVG2Cache":
        """An empty (cold) cache for ``num_layers`` layers."""
        for name, value in (
            ("num_layers", num_layers),
            ("batch", batch),
            ("heads", heads),
            ("head_dim", head_dim),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SVG2Cache.create: {name} must be a positive int; got {value!r}")
        lead = (num_layers, batch, heads)
        return cls(
            q_centroids=jnp.zeros((*lead, config.num_q_clusters, head_dim), jnp.float32),
            k_centroids=jnp.zeros((*lead, config.num_k_clusters, head_dim), jnp.float32),
            warm=jnp.zeros((num_layers,), jnp.bool_),
        )

    def layer(self, i: int | Int[Array, ""]) -> "SVG2Cache":
        """The slice of layer ``i``."""
        return jax.tree.map(lambda a: a[i], self)

    def with_layer(self, i: int | Int[Array, ""], layer_cache: "SVG2Cache") -> "SVG2Cache":
        """A copy with layer ``i`` replaced by ``layer_cache``."""
        return jax.tree.map(lambda a, b: a.at[i].set(b), self, layer_cache)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVG2Plan:
    """The sparsity plan of one layer call. ``Nv`` counts video tokens; ``Cq2 = Cq (+2 with text)``.

    The attention runs on the sorted sequence ``[video tokens in cluster order, text (prompt, padding)]``:
    sorted slot ``s`` holds video token ``q_perm[..., s]``; text pseudo-clusters come last. Cluster ids
    here are layout positions (:mod:`svg_jax.cluster_layout`), not k-means labels: cluster ``i`` is
    k-means cluster ``q_order[..., i]``, whose centroid is the cache's entry ``q_order[..., i]``.
    """

    q_labels: Int[Array, "B H Nv"]  # cluster of each video query (its layout position), original order
    k_labels: Int[Array, "B H Nv"]
    q_perm: Int[Array, "B H Nv"]  # stable argsort of q_labels
    k_perm: Int[Array, "B H Nv"]  # stable argsort of k_labels (v follows k)
    q_cluster_sizes: Int[Array, "B H Cq2"]  # video clusters, then prompt and padding with text
    k_cluster_sizes: Int[Array, "B H Ck2"]
    cluster_map: Bool[Array, "B H Cq2 Ck2"]  # query cluster i attends key cluster j
    probs: Float[Array, "B H Cq Ck"]  # estimated attention mass of each video cluster pair
    q_order: Int[Array, "B H Cq"]  # k-means label of the query cluster at each layout position
    k_order: Int[Array, "B H Ck"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVG2Stats:
    """Small jit-friendly diagnostics of one call."""

    density: Float[Array, "B H"]  # Σ n_q·n_k·map / N² over the whole sequence (text included)
    estimated_recall: Float[Array, "B H"]  # centroid-estimated attention mass kept, query-size weighted
    q_kmeans_iters: Int[Array, ""]  # Lloyd iterations run on Q
    k_kmeans_iters: Int[Array, ""]
    # The query tiling the attention ran, an index into QUERY_TILINGS (SVG2Config.query_tiles; what "auto"
    # picked). None from svg2_plan, which does not run the attention.
    query_tiling: Int[Array, ""] | None = None


def _split_text(x: Float[Array, "B N H D"], text: TextTokens | None):
    """``(video, text)`` parts of a sequence (text is None without text tokens)."""
    if text is None:
        return x, None
    ctx = text.num_tokens
    if text.placement == "first":
        return x[:, ctx:], x[:, :ctx]
    return x[:, :-ctx], x[:, -ctx:]


def _check_call(q, k, v, config, cache, text) -> None:
    if not isinstance(config, SVG2Config):
        raise ValueError(f"config must be an SVG2Config; got {type(config).__name__}")
    checks.check_qkv(q, k, v)
    b, n, h, d = q.shape
    if k.shape[1] != n:
        raise ValueError(
            f"svg2_attention is self-attention: q and k need the same length; got {q.shape=}, {k.shape=}"
        )
    ctx = 0 if text is None else text.num_tokens
    if ctx >= n:
        raise ValueError(f"text.num_tokens={ctx} leaves no video tokens in a sequence of N={n}")
    if text is not None and text.valid_len is not None and jnp.shape(text.valid_len) != (b,):
        raise ValueError(f"text.valid_len must have shape [B] = ({b},); got {jnp.shape(text.valid_len)}")
    config.check_num_tokens(n - ctx)
    for name, arr, c in (
        ("q_centroids", cache.q_centroids, config.num_q_clusters),
        ("k_centroids", cache.k_centroids, config.num_k_clusters),
    ):
        if arr.shape != (b, h, c, d):
            hint = " (pass one layer's slice: cache.layer(i))" if arr.ndim == 5 else ""
            raise ValueError(
                f"cache.{name} must have shape [B, H, C, D] = {(b, h, c, d)}; got {arr.shape}{hint}"
            )
    if jnp.shape(cache.warm) != ():
        raise ValueError(
            f"cache.warm must be a scalar (one layer's slice); got shape {jnp.shape(cache.warm)}"
        )


def _cluster(x, cached, warm, key, *, num_clusters: int, config: SVG2Config, implementation, interpret):
    """Per-(batch, head) k-means of ``[B, Nv, H, D]`` tokens, read in place: cold (``key``) or warm
    (``cached [B, H, C, D]``). Returns labels ``[B, H, Nv]``, centroids, sizes ``[B, H, C]``, iterations
    and the tokens' stable order by label ``[B, H, Nv]``."""
    opts = dict(tol=KMEANS_TOL, implementation=implementation, interpret=interpret)

    def cold(_) -> KMeansResult:
        return kmeans(x, num_clusters, num_iters=config.kmeans_init_iters, key=key, **opts)

    def hot(_) -> KMeansResult:
        return kmeans(x, num_clusters, num_iters=config.kmeans_warm_iters, init_centroids=cached, **opts)

    res = jax.lax.cond(warm, hot, cold, None)
    return res.labels, res.centroids, res.sizes, res.num_iters_run, res.order


def svg2_plan(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B N H D"],
    *,
    config: SVG2Config,
    cache: SVG2Cache,
    key: PRNGKeyArray,
    text: TextTokens | None = None,
    sm_scale: float | None = None,
    implementation: str = "auto",
    interpret: bool | None = None,
) -> tuple[SVG2Plan, SVG2Cache, SVG2Stats]:
    """Cluster, sort and select: the plan of :func:`svg2_attention`, the updated layer cache and stats."""
    _check_call(q, k, k, config, cache, text)
    b, n, h, d = q.shape
    sm_scale = checks.default_sm_scale(q) if sm_scale is None else float(sm_scale)
    qv, _ = _split_text(q, text)
    kv, _ = _split_text(k, text)
    nv = qv.shape[1]
    key_q, key_k = jax.random.split(key)
    opts = dict(config=config, implementation=implementation, interpret=interpret)
    q_lab, q_cen, q_sizes, q_iters, q_sorted = _cluster(
        qv, cache.q_centroids, cache.warm, key_q, num_clusters=config.num_q_clusters, **opts
    )
    k_lab, k_cen, k_sizes, k_iters, k_sorted = _cluster(
        kv, cache.k_centroids, cache.warm, key_k, num_clusters=config.num_k_clusters, **opts
    )
    probs = cluster_probabilities(q_cen, k_cen, k_sizes, sm_scale=sm_scale)  # [B, H, Cq, Ck]
    cmap = top_p_cluster_map(
        probs,
        top_p=config.top_p,
        min_clusters=config.min_k_clusters,
        k_sizes=k_sizes,
        min_tokens=config.min_k_token_ratio * nv,
        implementation=implementation,
        interpret=interpret,
    )
    recall = jnp.sum(q_sizes * selected_mass(probs, cmap), axis=-1) / nv  # [B, H]
    # Lay the clusters out so that selected pairs are contiguous (fewer kernel chunks, same attention).
    q_order, k_order = seriate(cmap, config.layout_sweeps, q_sizes, k_sizes)
    q_lab, k_lab = relabel(q_lab, q_order), relabel(k_lab, k_order)
    q_perm, k_perm = regroup(q_sorted, q_sizes, q_order), regroup(k_sorted, k_sizes, k_order)  # no new sort
    q_sizes, k_sizes = reorder(q_sizes, q_order), reorder(k_sizes, k_order)
    cmap, probs = reorder_map(cmap, q_order, k_order), reorder_map(probs, q_order, k_order)

    if text is not None:
        ctx = text.num_tokens
        prompt = jnp.clip(jnp.sum(text.valid_mask(b), axis=-1, dtype=jnp.int32), 0, ctx)  # [B]
        txt_sizes = jnp.stack([prompt, ctx - prompt], axis=-1)  # [B, 2]
        txt_sizes = jnp.broadcast_to(txt_sizes[:, None, :], (b, h, 2))  # [B, H, 2]
        q_sizes_all = jnp.concatenate([q_sizes, txt_sizes], axis=-1)  # [B, H, Cq+2]
        k_sizes_all = jnp.concatenate([k_sizes, txt_sizes], axis=-1)  # [B, H, Ck+2]
        cmap_all = add_text_clusters(cmap)
    else:
        q_sizes_all, k_sizes_all, cmap_all = q_sizes, k_sizes, cmap

    pair = jnp.einsum(
        "bhi,bhij,bhj->bh",
        q_sizes_all.astype(jnp.float32),
        cmap_all.astype(jnp.float32),
        k_sizes_all.astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )
    plan = SVG2Plan(
        q_labels=q_lab,
        k_labels=k_lab,
        q_perm=q_perm,
        k_perm=k_perm,
        q_cluster_sizes=q_sizes_all,
        k_cluster_sizes=k_sizes_all,
        cluster_map=cmap_all,
        probs=probs,
        q_order=q_order,
        k_order=k_order,
    )
    new_cache = SVG2Cache(q_centroids=q_cen, k_centroids=k_cen, warm=jnp.ones((), jnp.bool_))
    stats = SVG2Stats(
        density=pair / float(n) ** 2, estimated_recall=recall, q_kmeans_iters=q_iters, k_kmeans_iters=k_iters
    )
    return plan, new_cache, stats


def _kernel_order(
    perm: Int[Array, "B H Nv"], text: TextTokens | None, n: int, rows: int
) -> Int[Array, "B H R"]:
    """Source token of each row of the kernel's input: the video tokens in cluster order, then the text
    tokens, then ``rows - n`` padding rows (copies of token 0: finite, and masked by the plan)."""
    b, h, nv = perm.shape
    ctx = n - nv
    first = text is not None and text.placement == "first"
    parts = [perm + (ctx if first else 0)]
    if ctx:
        start = 0 if first else nv
        parts.append(jnp.broadcast_to(jnp.arange(start, start + ctx, dtype=perm.dtype), (b, h, ctx)))
    if rows > n:
        parts.append(jnp.zeros((b, h, rows - n), perm.dtype))
    return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else perm


def apply_svg2_plan(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B N H D"],
    v: Float[Array, "B N H D"],
    plan: SVG2Plan,
    *,
    text: TextTokens | None = None,
    sm_scale: float | None = None,
    query_tiles: str = "auto",
    implementation: str = "auto",
    interpret: bool | None = None,
) -> Float[Array, "B N H D"]:
    """Permute by the plan, run cluster-sparse attention, and restore the original token order.

    One gather per operand builds the kernel's input from the whole sequence (video tokens in cluster
    order, text tokens, and the kernel's padding rows: :func:`~svg_jax.pallas_kernels.padded_rows`), so
    nothing is split, concatenated or padded apart; one gather of the kernel's output restores the order.
    ``query_tiles`` (:attr:`SVG2Config.query_tiles`) picks how the query rows are tiled: ``"auto"``
    compiles every tiling the path has (fixed and aligned; paged too on the Mosaic path) and runs the one
    estimated cheapest (:func:`query_tiling_costs`, ``lax.switch``).
    """
    out, _ = _apply_svg2_plan(
        q,
        k,
        v,
        plan,
        text=text,
        sm_scale=sm_scale,
        query_tiles=query_tiles,
        implementation=implementation,
        interpret=interpret,
    )
    return out


def _apply_svg2_plan(
    q, k, v, plan: SVG2Plan, *, text, sm_scale, query_tiles: str, implementation: str, interpret
) -> tuple[Float[Array, "B N H D"], Bool[Array, ""]]:
    """:func:`apply_svg2_plan`, and the tiling it ran (an index into :data:`QUERY_TILINGS`)."""
    if query_tiles not in QUERY_TILES:
        raise ValueError(f"query_tiles must be one of {QUERY_TILES}; got {query_tiles!r}")
    n = q.shape[1]
    sizes = (plan.q_cluster_sizes, plan.k_cluster_sizes, plan.cluster_map)
    impl, tile_plan = cluster_plan_for(q, k, *sizes, implementation=implementation)
    perm_opts = dict(implementation=implementation, interpret=interpret)
    rows_k = n if tile_plan is None else padded_rows(tile_plan, impl)[1]
    ks, vs = permute_tokens([k, v], _kernel_order(plan.k_perm, text, n, rows_k), **perm_opts)  # v follows k

    def attend(q_src, tiles, restore, tile_rows=None):  # q rows from q_src, attention on tiles, tokens back
        (qs,) = permute_tokens([q], q_src, **perm_opts)  # [B, rows_q, H, D] in cluster order
        if tiles is None:  # the oracle (inputs validated by cluster_plan_for)
            sm = checks.default_sm_scale(q) if sm_scale is None else float(sm_scale)
            out = cluster_sparse_attention_reference(qs, ks, vs, *sizes, sm_scale=sm)
        else:
            opts = dict(sm_scale=sm_scale, implementation=impl, interpret=interpret, tile_rows=tile_rows)
            out = cluster_sparse_attention_from_plan(qs, ks, vs, tiles, **opts)  # [B, rows_q, H, D]
        return permute_tokens([out], restore, **perm_opts)[0]

    def fixed(_):
        rows_q = n if tile_plan is None else padded_rows(tile_plan, impl)[0]
        q_src = _kernel_order(plan.q_perm, text, n, rows_q)
        return attend(q_src, tile_plan, inverse_permutation(q_src[..., :n]))

    if tile_plan is not None:  # the aligned layout, shared by the aligned and paged tilings and auto's costs
        al = align_query_clusters(plan.q_cluster_sizes, plan.cluster_map, num_q=n, block_q=tile_plan.block_q)

    def aligned(_):
        q_src = _kernel_order(plan.q_perm, text, n, n)
        half = al.tile_rows if HALF_TILES else None
        return attend(
            al.source(q_src), retile_aligned(tile_plan, al), al.restore(inverse_permutation(q_src)), half
        )

    def paged(_):
        width = default_page_width(n, plan.k_cluster_sizes.shape[-1], tile_plan.block_k)
        pages = page_plan(
            al.sizes,
            plan.k_cluster_sizes,
            al.cluster_map,
            num_q=al.rows,
            num_k=n,
            block_q=tile_plan.block_q,
            block_k=tile_plan.block_k,
            width=width,
        )
        q_src = _kernel_order(plan.q_perm, text, n, n)
        (qs,) = permute_tokens([q], al.source(q_src), **perm_opts)
        sm = checks.default_sm_scale(q) if sm_scale is None else float(sm_scale)
        half = al.tile_rows if HALF_TILES else None
        attention = lambda p: paged_sparse_attention_mosaic(qs, ks, vs, p, sm_scale=sm, tile_rows=half)
        out = with_complete_pages(pages, attention)
        return permute_tokens([out], al.restore(inverse_permutation(q_src)), **perm_opts)[0]

    code = lambda name: jnp.int32(QUERY_TILINGS.index(name))
    if query_tiles == "paged" and tile_plan is not None:
        if impl != "pallas_mosaic":
            raise ValueError(
                f"query_tiles='paged' runs the Mosaic GPU kernel only (Hopper, bf16/f16); this call resolved "
                f"implementation={impl!r}: use query_tiles='auto', 'fixed' or 'aligned' there"
            )
        return paged(None), code("paged")
    if tile_plan is None or query_tiles == "fixed":  # (the oracle has no tiles)
        return fixed(None), code("fixed")
    if query_tiles == "aligned":
        return aligned(None), code("aligned")
    branches = (fixed, aligned, paged) if impl == "pallas_mosaic" else (fixed, aligned)
    costs = query_tiling_costs(tile_plan, *sizes, num_tokens=n, aligned=al if len(branches) == 3 else None)
    pick = jnp.argmin(costs).astype(jnp.int32)  # the least estimated work (the first of equal ones)
    return jax.lax.switch(pick, branches, None), pick


def query_tiling_costs(
    tile_plan: ClusterTilePlan,
    q_cluster_sizes: Int[Array, "B H Cq"],
    k_cluster_sizes: Int[Array, "B H Ck"],
    cluster_map: Bool[Array, "B H Cq Ck"],
    *,
    num_tokens: int,
    aligned: AlignedQueries | None = None,
) -> Float[Array, " T"]:
    """The estimated work of each tiling of :data:`QUERY_TILINGS` (the paged one only given the ``aligned``
    query layout, :func:`~svg_jax.pallas_kernels.tile_aligned.align_query_clusters` at the plan's block_q),
    summed over batch and heads, in unmasked chunks of the cluster kernel: the fixed plan's chunks with
    its masked ones at :data:`MASKED_CHUNK_WEIGHT` (:func:`~svg_jax.pallas_kernels.tile_aligned.fixed_cost`,
    the plan is built), the aligned plan's estimated from the map with its run edges at
    :data:`ALIGNED_EDGE_WEIGHT` (:func:`~svg_jax.pallas_kernels.tile_aligned.aligned_cost`), and the
    paged kernel's key tiles and partial tiles at :data:`PAGED_TILE_WEIGHT` and :data:`PAGED_PARTIAL_WEIGHT`
    (:func:`~svg_jax.pallas_kernels.page_plan.paged_cost`, on the aligned query layout). Neither of the
    last two builds its plan. ``num_tokens`` is the sequence length (queries and keys alike); the paged
    kernel is Mosaic only. ``query_tiles="auto"`` runs the first tiling of least work."""
    bq, bk = tile_plan.block_q, tile_plan.block_k
    fixed = jnp.sum(fixed_cost(tile_plan, MASKED_CHUNK_WEIGHT))
    blocks = dict(block_q=bq, block_k=bk)
    edges = aligned_cost(
        q_cluster_sizes, k_cluster_sizes, cluster_map, **blocks, masked_weight=ALIGNED_EDGE_WEIGHT
    )
    costs = [fixed, jnp.sum(edges)]
    if aligned is not None:
        weights = dict(tile_weight=PAGED_TILE_WEIGHT, partial_weight=PAGED_PARTIAL_WEIGHT)
        layout = (aligned.sizes, k_cluster_sizes, aligned.cluster_map)
        pages = paged_cost(*layout, num_k=num_tokens, **blocks, **weights)
        costs.append(jnp.sum(pages))
    return jnp.stack(costs).astype(jnp.float32)


def svg2_attention(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B N H D"],
    v: Float[Array, "B N H D"],
    *,
    config: SVG2Config,
    cache: SVG2Cache,
    key: PRNGKeyArray,
    text: TextTokens | None = None,
    sm_scale: float | None = None,
    implementation: str = "auto",
    interpret: bool | None = None,
) -> tuple[Float[Array, "B N H D"], SVG2Cache, SVG2Stats]:
    """SVG2 self-attention of one layer: ``(out, new_cache, stats)``; ``cache`` is that layer's slice.

    The first call on a cold cache runs ``kmeans_init_iters`` iterations from random tokens (``key``);
    later calls warm-start from the cached centroids (``kmeans_warm_iters``). ``text`` says where text
    tokens sit and which are padding; they are not clustered but form the prompt/padding pseudo-clusters.
    ``implementation``/``interpret`` select the k-means and attention kernels (never the result).
    """
    _check_call(q, k, v, config, cache, text)
    plan, new_cache, stats = svg2_plan(
        q,
        k,
        config=config,
        cache=cache,
        key=key,
        text=text,
        sm_scale=sm_scale,
        implementation=implementation,
        interpret=interpret,
    )
    out, tiling = _apply_svg2_plan(
        q,
        k,
        v,
        plan,
        text=text,
        sm_scale=sm_scale,
        query_tiles=config.query_tiles,
        implementation=implementation,
        interpret=interpret,
    )
    return out, new_cache, dataclasses.replace(stats, query_tiling=tiling)
