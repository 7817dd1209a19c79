"""The Mosaic GPU kernels lower for Hopper on any machine: ``jax.export`` to the CUDA platform runs the whole
Pallas → Mosaic GPU lowering (layouts, wgmma, TMA, barriers) without a GPU (jax 0.11.2 assumes sm_90 when
no CUDA device is present). This catches lowering errors before a device run; the numerics are tested on
the GPU (``-m gpu``)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest
from jax import export

from svg_jax.pallas_kernels import cluster_tile_plan
from svg_jax.pallas_kernels.block_sparse_attn_mosaic import block_sparse_attention_mosaic
from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import cluster_mask, cluster_sparse_attention_mosaic


def lowered(fn, *args) -> str:
    """The exported StableHLO text of ``fn`` for CUDA (the Mosaic kernel is inside as a custom call)."""
    text = export.export(jax.jit(fn), platforms=["cuda"])(*args).mlir_module()
    assert "mosaic_gpu" in text
    return text


@pytest.mark.parametrize(
    "block_k, per_step, padded, overlap, fold",
    [
        (64, 1, False, False, False),
        (64, 2, False, False, False),
        (128, 1, False, False, False),
        (128, 1, True, False, False),
        (128, 1, False, True, False),
        (64, 1, True, True, False),
        (128, 1, False, True, True),
        (64, 2, True, False, True),
    ],
)
def test_block_kernel_lowers(block_k, per_step, padded, overlap, fold):
    b, h, n, d = 1, 2, 1000, 128
    q = jnp.zeros((b, n, h, d), jnp.bfloat16)
    nkb = -(-n // block_k)
    idx = jnp.zeros((b, h, 8, nkb), jnp.int32)
    cnt = jnp.full((b, h, 8), 3, jnp.int32)
    pad = jnp.array([[600, 1000]], jnp.int32) if padded else None
    opts = dict(block_k=block_k, sm_scale=d**-0.5, tiles_per_step=per_step, key_padding=pad, overlap=overlap)
    opts["fold_scale"] = fold
    fn = functools.partial(block_sparse_attention_mosaic, **opts)
    lowered(fn, q, q, q, idx, cnt)


def _cluster_problem(block_k, b=1, h=2, n=1000, d=128):
    """Zero q [B, N, H, D], 8 x 20 equal clusters on a random map, and the Mosaic kernel's plan."""
    q = jnp.zeros((b, n, h, d), jnp.bfloat16)
    qs = jnp.full((b, h, 8), n // 8, jnp.int32)
    ks = jnp.full((b, h, 20), n // 20, jnp.int32)
    cmap = jax.random.bernoulli(jax.random.key(0), 0.5, (b, h, 8, 20))
    plan = cluster_tile_plan(qs, ks, cmap, num_q=n, num_k=n, block_q=128, block_k=block_k, row_align=8)
    return q, qs, cmap, plan


@pytest.mark.parametrize(
    "block_k, per_step, mask, opts",
    [
        (64, 1, None, {}),
        (64, 2, None, {}),
        (128, 1, None, {}),
        (64, 1, functools.partial(cluster_mask, branch=False), {}),
        (64, 1, None, dict(overlap=True)),
        (64, 1, None, dict(overlap=True, per_warpgroup_mask=False)),
        (64, 2, None, dict(per_warpgroup_mask=False)),
        (128, 1, None, dict(per_warpgroup_mask=False)),
        (64, 1, None, dict(overlap=True, fold_scale=True)),
        (64, 2, None, dict(fold_scale=True)),
    ],
    ids=[
        "64",
        "64-two-per-step",
        "128",
        "64-branch-free",
        "64-overlap",
        "64-overlap-tile-wide",
        "64-two-per-step-tile-wide",
        "128-tile-wide",
        "64-overlap-fold-scale",
        "64-two-per-step-fold-scale",
    ],
)
def test_cluster_kernel_lowers(block_k, per_step, mask, opts):
    q, _, _, plan = _cluster_problem(block_k)
    d = q.shape[-1]
    fn = lambda q, plan: cluster_sparse_attention_mosaic(
        q, q, q, plan, sm_scale=d**-0.5, tiles_per_step=per_step, make_mask=mask, **opts
    )
    lowered(fn, q, plan)


@pytest.mark.parametrize(
    "block_k, per_step, overlap, half",
    [(64, 1, True, False), (64, 1, False, False), (64, 2, False, False), (128, 1, True, False)]
    + [(64, 1, True, True), (64, 2, False, True)],
)
def test_cluster_kernel_edge_mask_lowers(block_k, per_step, overlap, half):
    """``edge_only`` on an aligned plan (``tile_aligned.align_plan``): the mask reads only the chunk codes
    and has no second load stage. With ``half``, tiles of at most 64 real rows run on one warpgroup."""
    from svg_jax.pallas_kernels.tile_aligned import align_plan

    q, qs, cmap, fixed = _cluster_problem(block_k)
    b, n, h, d = q.shape
    al, plan = align_plan(fixed, qs, cmap, num_q=n)
    qa = jnp.zeros((b, al.rows, h, d), jnp.bfloat16)
    opts = dict(sm_scale=d**-0.5, tiles_per_step=per_step, overlap=overlap, edge_only=True)
    rows = al.tile_rows if half else None
    fn = lambda q, k, plan, rows: cluster_sparse_attention_mosaic(q, k, k, plan, tile_rows=rows, **opts)
    lowered(fn, qa, q, plan, rows)


@pytest.mark.parametrize(
    "block_k, overlap, fold, rows, half",
    [(64, True, False, 8, False), (64, False, False, 16, False), (128, True, True, 32, False)]
    + [(64, True, False, 16, True)],
)
def test_paged_kernel_lowers(block_k, overlap, fold, rows, half):
    """The paged kernel: ``block_k / 8`` TMA copies per K/V tile, one barrier arrival each, and the valid-bit
    column bias (with ``half``: tiles of at most 64 real rows on one warpgroup)."""
    from svg_jax.pallas_kernels.page_plan import page_plan
    from svg_jax.pallas_kernels.paged_sparse_attn_mosaic import paged_sparse_attention_mosaic
    from svg_jax.pallas_kernels.tile_aligned import align_query_clusters

    q, qs, cmap, _ = _cluster_problem(block_k)
    b, n, h, d = q.shape
    al = align_query_clusters(qs, cmap, num_q=n, block_q=128)
    ks = jnp.full((b, h, 20), n // 20, jnp.int32)
    plan = page_plan(al.sizes, ks, al.cluster_map, num_q=al.rows, num_k=n, block_k=block_k, page_rows=rows)
    qa = jnp.zeros((b, al.rows, h, d), jnp.bfloat16)
    opts = dict(sm_scale=d**-0.5, overlap=overlap, fold_scale=fold)
    fn = lambda q, k, plan, t: paged_sparse_attention_mosaic(q, k, k, plan, tile_rows=t, **opts)
    lowered(fn, qa, q, plan, al.tile_rows if half else None)


@pytest.mark.parametrize(
    "k, block_k, row_blocks",
    [(300, None, 1), (300, 128, 1), (1000, None, 1), (20, None, 1), (200, 64, 1), (300, None, 2)]
    + [(1000, 40, 2)],
)
def test_kmeans_assign_kernel_lowers(k, block_k, row_blocks):
    """Tile widths that are not a power of two (300 centroids: 3 tiles of 104) lower like 64 and 128;
    two 64-row blocks per warpgroup (256-row items) lower too."""
    from svg_jax.pallas_kernels.kmeans_mosaic import kmeans_assign_mosaic

    x = jnp.zeros((1, 1000, 2, 128), jnp.bfloat16)
    c = jnp.zeros((2, k, 128), jnp.float32)
    lowered(functools.partial(kmeans_assign_mosaic, block_k=block_k, row_blocks=row_blocks), x, c)


@pytest.mark.parametrize("half", [False, True])
def test_svg2_auto_query_tiles_lower(monkeypatch, half):
    """SVG2's attention on the Mosaic path with ``query_tiles="auto"``: one ``lax.switch`` over the fixed,
    aligned and paged kernels (with ``svg2.HALF_TILES``: the last two on half tiles)."""
    from svg_jax import svg2

    monkeypatch.setattr(svg2, "HALF_TILES", half)
    cfg = svg2.SVG2Config(
        **{**dataclasses.asdict(svg2.WAN21_T2V_720P), "num_q_clusters": 16, "num_k_clusters": 64}
    )
    b, n, h, d = 1, 2001, 2, 128
    q = jax.random.normal(jax.random.key(1), (b, n, h, d), jnp.bfloat16)
    cache = svg2.SVG2Cache.create(1, b, h, cfg, d).layer(0)
    plan = svg2.svg2_plan(q, q, config=cfg, cache=cache, key=jax.random.key(0))[0]
    fn = lambda q, plan: svg2.apply_svg2_plan(q, q, q, plan, implementation="pallas_mosaic")
    text = lowered(fn, q, plan)
    assert text.count("stablehlo.case") == 1
