"""Cluster (variable-block) sparse attention (SVG2): Pallas kernel lowered through Triton.

Scheme: tokens are already sorted by cluster, so each cluster is a contiguous row range. Instead of
padding every cluster to a block multiple (FlashInfer's variable-block approach, which computes up to
1.7–1.9× the needed FLOPs), the queries are cut into fixed ``block_q``-row tiles that ignore cluster
boundaries, and :func:`cluster_tile_plan` turns each tile's selected key clusters into runs of contiguous
key rows walked in ``block_k``-row chunks that start anywhere (no unselected key cluster is computed). The
kernel walks the chunk list with an online softmax, masks the rows past each run's end, and, only where the
tile's query clusters disagree on a run, masks element by element with ``map[q_label[row], k_label[col]]``
(one gathered map row per query cluster of the tile). So the result is exact, and the waste is bounded by
the run tails and the tiles that straddle query clusters with different selections.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Bool, Float, Int

from . import checks
from .block_sparse_attn import (
    LOG2E,
    flash_loop,
    online_softmax_step,
    qk_logits,
)
from .cluster_plan import ClusterTilePlan, cluster_tile_plan, decode_chunk, default_width, with_complete_plan
from .cluster_sparse_attn_mosaic import ROW_ALIGN, cluster_sparse_attention_mosaic, mosaic_plan_ok
from .common import TritonConfig, default_triton_config, pad_axis, padded_head_dim, resolve_implementation
from .mosaic_flash import CTA_ROWS, check_mosaic_inputs, mosaic_supports
from .reference import cluster_sparse_attention_reference

DEFAULT_BLOCK_Q = 64  # Triton: 64×64 measured fastest on H100 (docs/benchmarks.md)
DEFAULT_BLOCK_K = 64
MOSAIC_BLOCK_K = 64  # Mosaic: 128-row query tiles (fixed), 64-row key chunks


def default_blocks(implementation: str, block_q: int | None, block_k: int | None) -> tuple[int, int, int]:
    """``(block_q, block_k, row_align)`` of the plan for a resolved implementation (None: its default)."""
    if implementation == "pallas_mosaic":
        return block_q or CTA_ROWS, block_k or MOSAIC_BLOCK_K, ROW_ALIGN
    return block_q or DEFAULT_BLOCK_Q, block_k or DEFAULT_BLOCK_K, 1


def _tile_mask(map_ref, q_lab, k_lab, lo, hi):
    """``map[q_lab[r], k_lab[c]]`` for one tile, as an OR over the query clusters ``lo..hi`` in the tile.

    Each step gathers one map row at the tile's key labels (``block_k`` loads) and ORs it into the rows of
    that cluster; a tile holds only a few query clusters, so this is far cheaper than gathering all
    ``block_q·block_k`` entries.
    """

    def add_cluster(u, allowed):
        row = map_ref[u, k_lab] != 0  # [bk]
        return allowed | ((q_lab == u)[:, None] & row[None, :])

    init = jnp.zeros((q_lab.shape[0], k_lab.shape[0]), jnp.bool_)
    return jax.lax.fori_loop(lo, hi + 1, add_cluster, init)


def _kernel(
    start_ref,
    code_ref,
    cnt_ref,
    qlab_ref,
    klab_ref,
    map_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    *,
    scale_log2: float,
    block_k: int,
    max_start: int,
    num_chunks: int,
):
    block_q, head_dim = q_ref.shape
    q = q_ref[...]  # [bq, D]
    q_lab = qlab_ref[...]  # [bq], ascending: the tile's clusters are lo..hi
    lo, hi = qlab_ref[0], qlab_ref[block_q - 1]
    count = jnp.clip(cnt_ref[0], 0, num_chunks)

    def body(j, carry):
        start = jnp.clip(start_ref[j], 0, max_start)  # a run's row: any offset, never out of bounds
        code = code_ref[j]
        lead, valid, uniform = decode_chunk(code)
        k = k_ref[pl.ds(start, block_k), :]  # [bk, D]
        v = v_ref[pl.ds(start, block_k), :]  # [bk, D]
        s = qk_logits(q, k, scale_log2)  # [bq, bk]
        cols = jax.lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
        s = jnp.where((cols >= lead) & (cols < valid), s, -jnp.inf)

        def mask(s):  # the tile's query clusters disagree on this run: exact element mask
            allowed = _tile_mask(map_ref, q_lab, klab_ref[pl.ds(start, block_k)], lo, hi)
            return jnp.where(allowed, s, -jnp.inf)

        s = jax.lax.cond(uniform != 0, lambda s: s, mask, s)
        return online_softmax_step(carry, s, v, masked=True)

    o_ref[...] = flash_loop(count, body, block_q=block_q, head_dim=head_dim).astype(o_ref.dtype)


def _call(q, k, v, plan: ClusterTilePlan, *, sm_scale: float, config: TritonConfig, interpret: bool):
    """Launch on padded operands: q ``[B, nqt·bq, H, Dp]``, k/v ``[B, M + pad, H, Dp]``."""
    b, nq_pad, h, d = q.shape
    mk = k.shape[1]
    bq, bk = plan.block_q, plan.block_k
    nqt, width = plan.chunk_starts.shape[2:]
    cq1, ck1 = plan.cluster_map.shape[2:]
    kernel = functools.partial(
        _kernel, scale_log2=sm_scale * LOG2E, block_k=bk, max_start=mk - bk, num_chunks=width
    )
    list_spec = pl.BlockSpec((None, None, None, width), lambda i, bi, hi: (bi, hi, i, 0))
    kv_spec = pl.BlockSpec((None, mk, None, d), lambda i, bi, hi: (bi, 0, hi, 0))
    return pl.pallas_call(
        kernel,
        grid=(nqt, b, h),
        in_specs=[
            list_spec,
            list_spec,
            pl.BlockSpec((None, None, None, 1), lambda i, bi, hi: (bi, hi, i, 0)),
            pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i)),
            pl.BlockSpec((None, None, mk), lambda i, bi, hi: (bi, hi, 0)),
            pl.BlockSpec((None, None, cq1, ck1), lambda i, bi, hi: (bi, hi, 0, 0)),
            pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
            kv_spec,
            kv_spec,
        ],
        out_specs=pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
        out_shape=jax.ShapeDtypeStruct((b, nq_pad, h, d), q.dtype),
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
        interpret=interpret,
        name="cluster_sparse_attention",
    )(
        plan.chunk_starts,
        plan.chunk_codes,
        plan.chunk_counts[..., None],
        plan.q_labels,
        plan.k_labels,
        plan.cluster_map,
        q,
        k,
        v,
    )


def check_cluster_inputs(q, k, q_cluster_sizes, k_cluster_sizes, cluster_map) -> None:
    """Validate cluster sizes and the map against ``[B, N, H, D]`` q / ``[B, M, H, D]`` k."""
    b, n, h, _ = q.shape
    m = k.shape[1]
    for name, x in (("q_cluster_sizes", q_cluster_sizes), ("k_cluster_sizes", k_cluster_sizes)):
        if x.ndim != 3:
            raise ValueError(f"{name} must have rank 3 [B, H, C]; got shape {x.shape}")
        checks.check_int_array(name, x, (b, h, x.shape[2]))
        if x.shape[2] < 1:
            raise ValueError(f"{name} needs at least one cluster; got shape {x.shape}")
    cq, ck = q_cluster_sizes.shape[2], k_cluster_sizes.shape[2]
    if cluster_map.shape != (b, h, cq, ck):
        raise ValueError(
            f"cluster_map must have shape [B, H, Cq, Ck] = {(b, h, cq, ck)}; got {cluster_map.shape}"
        )
    if cluster_map.dtype != jnp.bool_:
        raise ValueError(f"cluster_map must be boolean; got dtype {cluster_map.dtype}")
    checks.check_sizes_sum("q_cluster_sizes", q_cluster_sizes, n, "N (query rows)")
    checks.check_sizes_sum("k_cluster_sizes", k_cluster_sizes, m, "M (key rows)")


def cluster_sparse_attention(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    q_cluster_sizes: Int[Array, "B H Cq"],
    k_cluster_sizes: Int[Array, "B H Ck"],
    cluster_map: Bool[Array, "B H Cq Ck"],
    *,
    sm_scale: float | None = None,
    implementation: str = "auto",
    interpret: bool | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    config: TritonConfig | None = None,
) -> Float[Array, "B N H D"]:
    """Attention where each query row of cluster ``i`` sees the key rows of each cluster ``j`` with map[i, j].

    q rows form contiguous clusters of ``q_cluster_sizes`` (summing to N), k/v rows contiguous clusters of
    ``k_cluster_sizes`` (summing to M); zero-size clusters are allowed. A row whose cluster selects no
    (non-empty) key cluster outputs zeros. Layout ``[B, N, H, D]``; ``sm_scale`` defaults to ``D**-0.5``.

    Tiling scheme (see the module docstring): fixed ``block_q`` × ``block_k`` tiles over the sorted
    sequences, a per-query-tile list of key tiles built on device by :func:`cluster_tile_plan`, and an
    exact element mask only on tiles that straddle a cluster boundary with a mixed selection. ``block_q``
    and ``block_k`` (powers of two; None: the implementation's default) and ``config`` change speed,
    never the result.

    ``implementation``: ``"xla"`` (dense-masked oracle), ``"pallas_triton"`` (default tiles 64×64),
    ``"pallas_mosaic"`` (Hopper: Mosaic GPU, 128-row query tiles, 64- or 128-row key chunks, bf16/f16, D a
    multiple of 64; see ``cluster_sparse_attn_mosaic``) or ``"auto"`` (Mosaic on Hopper when the inputs
    qualify, else Triton on GPU, XLA on CPU). ``interpret`` defaults to True off-GPU (Triton only).
    """
    checks.check_qkv(q, k, v)
    impl, plan = cluster_plan_for(
        q,
        k,
        q_cluster_sizes,
        k_cluster_sizes,
        cluster_map,
        implementation=implementation,
        block_q=block_q,
        block_k=block_k,
    )
    sm_scale = checks.default_sm_scale(q) if sm_scale is None else float(sm_scale)
    if plan is None:
        return cluster_sparse_attention_reference(
            q, k, v, q_cluster_sizes, k_cluster_sizes, cluster_map, sm_scale=sm_scale
        )
    return cluster_sparse_attention_from_plan(
        q, k, v, plan, sm_scale=sm_scale, implementation=impl, interpret=interpret, config=config
    )


def cluster_plan_for(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B M H D"],
    q_cluster_sizes: Int[Array, "B H Cq"],
    k_cluster_sizes: Int[Array, "B H Ck"],
    cluster_map: Bool[Array, "B H Cq Ck"],
    *,
    implementation: str = "auto",
    block_q: int | None = None,
    block_k: int | None = None,
) -> tuple[str, ClusterTilePlan | None]:
    """Validate the inputs, resolve ``implementation`` and build its chunk plan: ``(implementation, plan)``
    with ``plan=None`` for ``"xla"`` (the oracle takes the cluster sizes). What
    :func:`cluster_sparse_attention` runs; callers that lay out q, k, v themselves use it with
    :func:`padded_rows` and :func:`cluster_sparse_attention_from_plan`."""
    checks.check_qkv(q, k, k)
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if size is not None:
            checks.check_block_size(name, size)
    check_cluster_inputs(q, k, q_cluster_sizes, k_cluster_sizes, cluster_map)
    mosaic_ok = mosaic_supports(q, *default_blocks("pallas_mosaic", block_q, block_k)[:2])
    impl = resolve_implementation(implementation, mosaic_ok=mosaic_ok)
    if impl == "xla":
        return impl, None
    block_q, block_k, row_align = default_blocks(impl, block_q, block_k)
    if impl == "pallas_mosaic":  # refuse before building a plan
        check_mosaic_inputs(q, block_q, block_k)
    plan = cluster_tile_plan(
        q_cluster_sizes,
        k_cluster_sizes,
        cluster_map,
        num_q=q.shape[1],
        num_k=k.shape[1],
        block_q=block_q,
        block_k=block_k,
        row_align=row_align,
        width=default_width(k.shape[1], k_cluster_sizes.shape[2], block_k, row_align),
    )
    return impl, plan


def padded_rows(plan: ClusterTilePlan, implementation: str) -> tuple[int, int]:
    """``(query rows, key rows)`` the kernel of ``implementation`` reads for ``plan``: whole query tiles,
    and ``block_k`` rows past the last key so a chunk may start at any key row (Mosaic: rounded up to
    whole 8-row TMA tiles). :func:`cluster_sparse_attention_from_plan` pads shorter q, k, v itself (a
    copy); operands built at these lengths (padding rows finite, e.g. copies of a real row) are read as
    they are, and the output then has the padded query rows too."""
    rows_k = plan.k_labels.shape[2]
    if implementation == "pallas_mosaic":
        rows_k = -(-rows_k // ROW_ALIGN) * ROW_ALIGN
    return plan.q_labels.shape[2], rows_k


def cluster_sparse_attention_from_plan(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    plan: ClusterTilePlan,
    *,
    sm_scale: float | None = None,
    implementation: str = "auto",
    interpret: bool | None = None,
    config: TritonConfig | None = None,
    tile_rows: Int[Array, "B H nqt"] | None = None,
) -> Float[Array, "B N H D"]:
    """Run a Pallas kernel on a plan from :func:`cluster_tile_plan` (to time or reuse the plan apart).
    A plan built narrower than its static bound runs as it is when every tile fits, else rebuilt at full
    width (both compiled; :func:`~.cluster_plan.with_complete_plan`).

    q has the plan's ``N`` rows or its :func:`padded_rows` (then so does the output); k and v its ``M``
    rows or their padded rows. Shorter operands are padded here, which copies them.

    ``implementation``: ``"pallas_mosaic"`` (plans with ``block_q=128`` and ``row_align=8``),
    ``"pallas_triton"``, or ``"auto"`` (Mosaic on Hopper when the plan and inputs qualify, else Triton).

    ``tile_rows`` (optional, ``[B, H, nqt]``): the real query rows of each tile; the Mosaic kernel runs a
    tile with at most 64 on one warpgroup and may leave the rest of its rows unwritten (padding rows whose
    output nobody reads, e.g. :attr:`.tile_aligned.AlignedQueries.tile_rows`). Triton computes every row.
    """
    checks.check_qkv(q, k, v)
    b, n, h, d = q.shape
    block_q, block_k = plan.block_q, plan.block_k
    nqt = plan.chunk_starts.shape[2]
    mk = plan.k_labels.shape[2]
    if implementation == "xla":
        raise ValueError(
            "implementation='xla' takes cluster sizes, not a plan: call cluster_sparse_attention instead"
        )
    impl = resolve_implementation(implementation, mosaic_ok=mosaic_plan_ok(q, plan))
    if impl == "xla":  # 'auto' off-GPU: the plan's kernel runs interpreted
        impl = "pallas_triton"
    key_rows = (mk - block_k, padded_rows(plan, impl)[1])  # the plan's keys, or already padded
    if plan.q_labels.shape != (b, h, nqt * block_q) or nqt != -(-n // block_q) or k.shape[1] not in key_rows:
        raise ValueError(
            f"plan does not fit q/k: it was built for {nqt}x{block_q} query rows and {mk - block_k} key rows "
            f"(or {key_rows[1]} padded ones) with (B, H)={plan.q_labels.shape[:2]}; got {q.shape=} and "
            f"{k.shape=}"
        )
    sm_scale = checks.default_sm_scale(q) if sm_scale is None else float(sm_scale)
    if impl == "pallas_mosaic":
        return with_complete_plan(
            plan,
            lambda p: cluster_sparse_attention_mosaic(q, k, v, p, sm_scale=sm_scale, tile_rows=tile_rows),
        )
    interpret = (jax.default_backend() != "gpu") if interpret is None else interpret
    dp = padded_head_dim(d)
    qp = pad_axis(pad_axis(q, 1, nqt * block_q), 3, dp)
    kp = pad_axis(pad_axis(k, 1, mk), 3, dp)  # a chunk may start at any key row: pad block_k rows
    vp = pad_axis(pad_axis(v, 1, mk), 3, dp)
    config = config or default_triton_config(block_q, dp)
    run = lambda p: _call(qp, kp, vp, p, sm_scale=sm_scale, config=config, interpret=interpret)
    return with_complete_plan(plan, run)[:, :n, :, :d]
