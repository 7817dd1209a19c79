"""Cluster layout (barycentre seriation): permutations, contiguity on block maps, and SVG2 invariance."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_utils import tile_plan

from svg_jax.cluster_layout import regroup, relabel, reorder, reorder_map, seriate
from svg_jax.svg2 import SVG2Cache, SVG2Config, apply_svg2_plan, svg2_plan


@settings(max_examples=5, deadline=None, derandomize=True)
@given(cq=st.integers(1, 12), ck=st.integers(1, 20), density=st.floats(0, 1), sweeps=st.integers(0, 3),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_orders_are_permutations_and_relabel_keeps_every_pair(cq, ck, density, sweeps, seed):
    rng = np.random.default_rng(seed)
    cmap = jnp.asarray(rng.random((2, cq, ck)) < density)
    q_order, k_order = jax.jit(seriate, static_argnums=1)(cmap, sweeps)
    for order, c in ((q_order, cq), (k_order, ck)):
        assert order.shape == (2, c) and order.dtype == jnp.int32
        np.testing.assert_array_equal(np.sort(np.asarray(order), -1), np.broadcast_to(np.arange(c), (2, c)))
    if sweeps == 0:
        np.testing.assert_array_equal(q_order, np.broadcast_to(np.arange(cq), (2, cq)))
    # Every token pair keeps its selection: map'[relabel(u), relabel(j)] == map[u, j].
    ql = jnp.asarray(rng.integers(0, cq, (2, 30)))
    kl = jnp.asarray(rng.integers(0, ck, (2, 40)))
    new = jax.jit(reorder_map)(cmap, q_order, k_order)
    rows, cols = np.asarray(q_order)[:, :, None], np.asarray(k_order)[:, None]
    np.testing.assert_array_equal(new, np.asarray(cmap)[np.arange(2)[:, None, None], rows, cols])
    before = np.asarray(cmap)[
        np.arange(2)[:, None, None], np.asarray(ql)[:, :, None], np.asarray(kl)[:, None]
    ]
    nq, nk = np.asarray(relabel(ql, q_order)), np.asarray(relabel(kl, k_order))
    after = np.asarray(new)[np.arange(2)[:, None, None], nq[:, :, None], nk[:, None]]
    np.testing.assert_array_equal(after, before)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(c=st.integers(1, 12), n=st.integers(1, 60), seed=st.integers(0, 2**16))
def test_regroup_is_the_stable_argsort_of_the_new_labels(c, n, seed):
    """The token order under a new cluster layout, built from the old order without a sort."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, (3, n)) * (rng.random((3, 1)) < 0.8)  # some groups: one cluster, rest empty
    layout = np.argsort(rng.random((3, c)), axis=-1).astype(np.int32)
    order = np.argsort(labels, axis=-1, kind="stable").astype(np.int32)
    sizes = np.stack([np.bincount(row, minlength=c) for row in labels]).astype(np.int32)
    got = jax.jit(regroup)(jnp.asarray(order), jnp.asarray(sizes), jnp.asarray(layout))
    want = np.argsort(np.asarray(relabel(jnp.asarray(labels), jnp.asarray(layout))), axis=-1, kind="stable")
    np.testing.assert_array_equal(got, want)


def test_block_map_with_shuffled_labels_becomes_contiguous():
    """Query cluster u of block b(u) selects exactly the key clusters of block b(u), labels shuffled:
    after seriation every query cluster's selection is one contiguous range of key positions."""
    rng = np.random.default_rng(0)
    cq, ck, blocks = 24, 60, 5
    qb, kb = rng.integers(0, blocks, cq), rng.integers(0, blocks, ck)
    cmap = jnp.asarray(qb[:, None] == kb[None, :])[None]
    q_order, k_order = seriate(cmap, 2)
    new = np.asarray(reorder_map(cmap, q_order, k_order))[0]
    for row in new:
        cols = np.flatnonzero(row)
        assert cols.size == 0 or cols[-1] - cols[0] + 1 == cols.size
    # ... and the chunk plan walks one run per query cluster instead of many.
    sizes_q, sizes_k = jnp.full((1, 1, cq), 40), jnp.full((1, 1, ck), 37)
    opts = dict(num_q=40 * cq, num_k=37 * ck, block_q=128, block_k=64, row_align=8)
    plan = lambda qs, ks, m: tile_plan(qs, ks, m[None], **opts)
    before = plan(sizes_q, sizes_k, cmap).computed_rows()
    after = plan(sizes_q, sizes_k, jnp.asarray(new)[None]).computed_rows()
    assert int(after) < 0.75 * int(before), (int(after), int(before))


def test_empty_clusters_go_last():
    """With sizes, empty clusters (no rows) are placed after every cluster with a selected pair, and the
    others are laid out as if the empty ones did not exist."""
    rng = np.random.default_rng(1)
    cq, ck = 10, 16
    cmap = jnp.asarray(rng.random((2, cq, ck)) < 0.4)
    q_sizes = jnp.asarray(rng.integers(1, 9, (2, cq))).at[:, ::3].set(0)
    k_sizes = jnp.asarray(rng.integers(1, 9, (2, ck))).at[:, 1::4].set(0)
    q_order, k_order = seriate(cmap, 2, q_sizes, k_sizes)
    keep = cmap & (q_sizes > 0)[..., :, None] & (k_sizes > 0)[..., None, :]
    for order, sizes, paired in ((q_order, q_sizes, keep.any(-1)), (k_order, k_sizes, keep.any(-2))):
        empty = np.asarray(jnp.take_along_axis(sizes, order, axis=-1) == 0)
        used = np.asarray(jnp.take_along_axis(paired, order, axis=-1))
        for e, u in zip(empty, used, strict=True):
            assert e.any() and np.flatnonzero(e).min() > np.flatnonzero(u).max()
    want = seriate(keep, 2)
    np.testing.assert_array_equal(np.asarray(want[0]), np.asarray(q_order))
    np.testing.assert_array_equal(np.asarray(want[1]), np.asarray(k_order))


def test_bad_arguments():
    with pytest.raises(ValueError, match="sweeps"):
        seriate(jnp.ones((3, 4), bool), -1)
    with pytest.raises(ValueError, match="x must have the shape of order"):
        reorder(jnp.ones((3, 4)), jnp.arange(3))


def test_svg2_layout_changes_speed_not_attention():
    """The same token-level selection and output with and without seriation."""
    base = SVG2Config(num_q_clusters=6, num_k_clusters=12, top_p=0.6, min_k_cluster_ratio=0.0,
                      kmeans_init_iters=5, kmeans_warm_iters=1, dense_steps=0, dense_layers=0)  # fmt: skip
    b, n, h, d = 1, 64, 2, 16
    q, k, v = (jax.random.normal(kk, (b, n, h, d)) for kk in jax.random.split(jax.random.key(3), 3))
    cache = SVG2Cache.create(1, b, h, base, d).layer(0)
    key = jax.random.key(4)
    masks, outs = [], []
    for sweeps in (0, 2):
        cfg = dataclasses.replace(base, layout_sweeps=sweeps)

        @jax.jit
        def run(q, k, v, cfg=cfg):
            plan = svg2_plan(q, k, config=cfg, cache=cache, key=key)[0]
            return plan, apply_svg2_plan(q, k, v, plan)

        plan, out = run(q, k, v)
        rows = jnp.take_along_axis(plan.cluster_map, plan.q_labels[..., None], axis=2)
        masks.append(np.asarray(jnp.take_along_axis(rows, plan.k_labels[:, :, None, :], axis=3)))
        outs.append(out)
        # The cache keeps k-means order: the plan's cluster i is k-means cluster q_order[i].
        np.testing.assert_array_equal(np.sort(np.asarray(plan.q_order), -1),
                                      np.broadcast_to(np.arange(6), (b, h, 6)))  # fmt: skip
    np.testing.assert_array_equal(masks[0], masks[1])
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5, rtol=1e-5)
