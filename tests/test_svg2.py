"""SVG2: config, cache, top-p selection, text clusters, and the whole pipeline against a dense oracle."""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svg_jax import svg2
from svg_jax.kmeans import cluster_order
from svg_jax.layout import TextTokens
from svg_jax.pallas_kernels import cluster_plan_for, masked_attention_reference, permute_tokens
from svg_jax.pallas_kernels.tile_aligned import align_query_clusters
from svg_jax.svg2 import SVG2Cache, SVG2Config, apply_svg2_plan, svg2_attention, svg2_plan
from svg_jax.topp import add_text_clusters, cluster_probabilities, top_p_cluster_map

ON_GPU = jax.default_backend() == "gpu"

BASE = dict(num_q_clusters=4, num_k_clusters=8, top_p=0.7, min_k_cluster_ratio=0.25,
            kmeans_init_iters=8, kmeans_warm_iters=2, dense_steps=0, dense_layers=0)
CFG = SVG2Config(**BASE)


def _qkv(seed: int, b: int, n: int, h: int, d: int, dtype=jnp.float32):
    return tuple(jax.random.normal(kk, (b, n, h, d), jnp.float32).astype(dtype)
                 for kk in jax.random.split(jax.random.key(seed), 3))


def _labels_full(plan, text, batch: int) -> tuple[jax.Array, jax.Array]:
    """Cluster id of every token in original sequence order, text pseudo-clusters included."""
    if text is None:
        return plan.q_labels, plan.k_labels
    cq, ck = plan.probs.shape[-2:]
    valid = text.valid_mask(batch)[:, None, :]  # [B, 1, ctx]
    out = []
    for lab, c in ((plan.q_labels, cq), (plan.k_labels, ck)):
        txt = jnp.broadcast_to(jnp.where(valid, c, c + 1), (*lab.shape[:2], text.num_tokens))
        parts = (txt, lab) if text.placement == "first" else (lab, txt)
        out.append(jnp.concatenate(parts, axis=-1))
    return tuple(out)


def _element_mask(plan, text, batch: int):
    """The ``[B, H, N, N]`` mask that the plan's cluster map means in original token order."""
    q_lab, k_lab = _labels_full(plan, text, batch)
    rows = jnp.take_along_axis(plan.cluster_map, q_lab[..., None], axis=2)  # [B, H, N, Ck2]
    return jnp.take_along_axis(rows, k_lab[:, :, None, :], axis=3)  # [B, H, N, N]


# --------------------------------------------------------------------------------------------------
# Config and presets


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_q_clusters", 0), ("num_k_clusters", 0), ("num_k_clusters", -3), ("top_p", 0.0),
        ("top_p", 1.5), ("top_p", -0.1), ("min_k_cluster_ratio", 1.2), ("kmeans_init_iters", -1),
        ("kmeans_warm_iters", -2), ("dense_steps", -1), ("dense_layers", True), ("query_tiles", "cluster"),
    ],
)
def test_bad_config_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        SVG2Config(**{**BASE, field: value})


def test_config_is_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.top_p = 0.5  # type: ignore[misc]
    assert hash(CFG) == hash(SVG2Config(**BASE))
    assert CFG.min_k_clusters == 2
    assert CFG.is_dense(0, 5) is False and SVG2Config(**{**BASE, "dense_steps": 3}).is_dense(2, 5)


def test_presets_match_official_scripts():
    table = {  # svg_methods.md §2.4: qc, kc, dense steps, dense layers
        "WAN21_T2V_720P": (300, 1000, 10, 1), "WAN21_I2V_720P": (300, 1000, 14, 1),
        "WAN21_I2V_480P": (200, 1000, 8, 1), "HUNYUAN_T2V_720P": (400, 1000, 5, 1),
        "HUNYUAN_T2V_480P": (200, 1000, 2, 0),
    }
    for name, (qc, kc, steps, layers) in table.items():
        c = getattr(svg2, name)
        assert (c.num_q_clusters, c.num_k_clusters, c.dense_steps, c.dense_layers) == (qc, kc, steps, layers)
        assert (c.top_p, c.min_k_cluster_ratio, c.kmeans_init_iters, c.kmeans_warm_iters) == (0.9, 0.1, 50, 2)
        assert c.min_k_clusters == 100
    assert set(svg2.PRESETS.values()) >= {getattr(svg2, n) for n in table}


def test_clusters_exceeding_tokens_rejected():
    q, k, v = _qkv(0, 1, 10, 1, 8)
    text = TextTokens("last", 4)  # 6 video tokens < 8 key clusters
    cache = SVG2Cache.create(1, 1, 1, CFG, 8).layer(0)
    with pytest.raises(ValueError, match="num_k_clusters"):
        svg2_attention(q, k, v, config=CFG, cache=cache, key=jax.random.key(0), text=text)
    with pytest.raises(ValueError, match="cache.layer"):
        svg2_attention(q, k, v, config=CFG, cache=SVG2Cache.create(2, 1, 1, CFG, 8), key=jax.random.key(0))


# --------------------------------------------------------------------------------------------------
# Top-p selection


def test_top_p_includes_crossing_cluster():
    probs = jnp.array([[0.05, 0.5, 0.15, 0.3]])  # sorted: 0.5 (1), 0.3 (3), 0.15 (2), 0.05 (0)
    np.testing.assert_array_equal(top_p_cluster_map(probs, top_p=0.6), [[False, True, False, True]])
    np.testing.assert_array_equal(top_p_cluster_map(probs, top_p=0.85), [[False, True, True, True]])
    # The most probable cluster is always kept, however small top_p is.
    np.testing.assert_array_equal(top_p_cluster_map(probs, top_p=1e-6), [[False, True, False, False]])


def test_top_p_floor_and_dense_limit():
    probs = jnp.array([[0.9, 0.06, 0.04, 0.0], [0.25, 0.25, 0.25, 0.25]])
    floor = top_p_cluster_map(probs, top_p=0.5, min_clusters=3)
    np.testing.assert_array_equal(floor, [[True, True, True, False], [True, True, True, False]])
    assert bool(top_p_cluster_map(probs, top_p=1.0).all())  # p = 1: dense, even zero-mass clusters
    ties = top_p_cluster_map(probs[1:], top_p=0.3)  # equal mass: lower index first
    np.testing.assert_array_equal(ties, [[True, True, False, False]])


def test_size_weighted_softmax():
    rng = np.random.default_rng(0)
    cq, ck = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))
    sizes = np.array([[3, 0, 1, 7, 2], [1, 1, 1, 1, 4]])
    p = np.asarray(cluster_probabilities(jnp.asarray(cq), jnp.asarray(ck), jnp.asarray(sizes), sm_scale=0.5))
    w = sizes[:, None, :] * np.exp(0.5 * np.einsum("gid,gjd->gij", cq, ck))
    np.testing.assert_allclose(p, w / w.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert (p[0, :, 1] == 0).all()


def test_text_cluster_map():
    m = add_text_clusters(jnp.array([[True, False], [False, True]]))
    expect = np.array([
        [1, 0, 1, 0],
        [0, 1, 1, 0],
        [1, 1, 1, 0],  # prompt: everything valid
        [0, 0, 0, 1],  # padding: only padding
    ], bool)
    np.testing.assert_array_equal(m, expect)


# --------------------------------------------------------------------------------------------------
# Permutation and pipeline


@settings(max_examples=20, deadline=None)
@given(
    lead=st.sampled_from([(1,), (3,), (2, 3), (1, 1)]),
    n=st.integers(1, 200),
    k=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    keys16=st.booleans(),
)
def test_cluster_order_is_the_stable_argsort(lead, n, k, seed, keys16):
    """One flat sort over all groups = the per-group stable argsort (empty clusters, one row, one label),
    with 16-bit keys (up to ``SORT16_KEYS`` keys) and 32-bit ones."""
    labels = jax.random.randint(jax.random.key(seed), (*lead, n), 0, k, jnp.int32)
    if seed % 3 == 0:
        labels = jnp.minimum(labels, 1)  # long runs of equal labels: stability decides everything
    want = jnp.argsort(labels, axis=-1, stable=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys.modules[cluster_order.__module__], "SORT16_KEYS", 2**16 if keys16 else 0)
        got = cluster_order(labels, k)
    assert got.dtype == jnp.int32 and got.shape == labels.shape
    np.testing.assert_array_equal(got, want)


def test_cluster_order_refuses_int32_overflow():
    with pytest.raises(ValueError, match="groups·num_clusters < 2\\*\\*31"):
        cluster_order(jnp.zeros((3, 5), jnp.int32), 2**30)


def test_permutation_round_trip():
    labels = jax.random.randint(jax.random.key(0), (2, 3, 50), 0, 6)
    perm = jnp.argsort(labels, axis=-1, stable=True)
    inv = svg2.inverse_permutation(perm)
    identity = np.broadcast_to(np.arange(50), (2, 3, 50))
    np.testing.assert_array_equal(jnp.take_along_axis(perm, inv, -1), identity)
    x = jax.random.normal(jax.random.key(1), (2, 50, 3, 4))  # [B, N, H, D]
    for impl in ("xla", "pallas_triton"):
        (y,) = permute_tokens([x], perm, implementation=impl, interpret=True)
        (z,) = permute_tokens([y], inv, implementation=impl, interpret=True)
        np.testing.assert_array_equal(z, x)
        np.testing.assert_array_equal(y[0, :, 1], np.asarray(x)[0, np.asarray(perm)[0, 1], 1])
    # Sorted labels are contiguous and the sort is stable.
    sl = np.asarray(jnp.take_along_axis(labels, perm, -1))
    assert (np.diff(sl, axis=-1) >= 0).all()
    p = np.asarray(perm)
    same = np.diff(sl, axis=-1) == 0
    assert (np.diff(p, axis=-1)[same] > 0).all()


TEXT_CASES = {
    "no_text": None,
    "last_padded": TextTokens("last", 6, jnp.array([4, 0], jnp.int32)),
    "first_unmasked": TextTokens("first", 5),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_pipeline_equals_masked_dense(case):
    text = TEXT_CASES[case]
    b, n, h, d = 2, 48, 2, 16
    q, k, v = _qkv(1, b, n, h, d)
    cache = SVG2Cache.create(1, b, h, CFG, d).layer(0)
    key = jax.random.key(2)
    fn = jax.jit(lambda q, k, v, c: (svg2_attention(q, k, v, config=CFG, cache=c, key=key, text=text),
                                     svg2_plan(q, k, config=CFG, cache=c, key=key, text=text)[0]))
    (out, new_cache, stats), plan = fn(q, k, v, cache)
    mask = _element_mask(plan, text, b)
    ref = masked_attention_reference(q, k, v, mask)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(stats.density, np.asarray(mask).mean((-1, -2)), rtol=1e-6)
    assert bool(new_cache.warm)
    # Sizes are the clusters' member counts and cover the sequence; the video map keeps >= the floor.
    np.testing.assert_array_equal(plan.q_cluster_sizes.sum(-1), n)
    np.testing.assert_array_equal(plan.k_cluster_sizes.sum(-1), n)
    # The token orders: k-means' own sort regrouped by the layout = the stable argsort of the plan's labels.
    for perm, labels in ((plan.q_perm, plan.q_labels), (plan.k_perm, plan.k_labels)):
        np.testing.assert_array_equal(perm, np.argsort(np.asarray(labels), axis=-1, kind="stable"))
    video_map = np.asarray(plan.cluster_map)[..., : CFG.num_q_clusters, : CFG.num_k_clusters]
    assert (video_map.sum(-1) >= CFG.min_k_clusters).all()
    assert (np.asarray(stats.estimated_recall) >= CFG.top_p - 1e-6).all()
    if text is not None and text.valid_len is not None:  # batch 1 has no prompt: its text is all padding
        np.testing.assert_array_equal(plan.q_cluster_sizes[1, :, -2:], np.broadcast_to([0, 6], (h, 2)))


@pytest.mark.parametrize("query_tiles", [t for t in svg2.QUERY_TILES if t != "paged"])  # paged: Mosaic only
@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_pipeline_pallas_interpret_matches_xla(case, query_tiles):
    """The kernel path gathers q, k, v straight into padded kernel order (text rows inline, padding rows
    copied from token 0) and restores the order from the padded output: same result as the oracle path,
    with the query tiles cut across clusters, aligned to them, or either by the estimate."""
    text = TEXT_CASES[case]
    b, n, h, d = 2, 37, 2, 16  # 37 rows: padded to whole tiles
    q, k, v = _qkv(3, b, n, h, d)
    cfg = dataclasses.replace(CFG, query_tiles=query_tiles)
    cache = SVG2Cache.create(1, b, h, cfg, d).layer(0)
    run = jax.jit(lambda impl: svg2_attention(q, k, v, config=cfg, cache=cache, key=jax.random.key(0),
                                              text=text, implementation=impl, interpret=True),
                  static_argnums=0)
    (out, _, stats), (ref, _, ref_stats) = run("pallas_triton"), run("xla")
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert svg2.QUERY_TILINGS[int(ref_stats.query_tiling)] == "fixed"  # the oracle path has no tiles
    ran = svg2.QUERY_TILINGS[int(stats.query_tiling)]  # the stats name the tiling that ran
    assert ran == query_tiles if query_tiles != "auto" else ran in ("fixed", "aligned")  # paged: Mosaic only


def test_paged_query_tiles_need_the_mosaic_kernel():
    """``query_tiles="paged"`` has a Mosaic kernel only: a clear error on the Triton path, the oracle on
    the XLA path (which has no tiles)."""
    q, k, v = _qkv(5, 1, 40, 1, 16)
    cache = SVG2Cache.create(1, 1, 1, CFG, 16).layer(0)
    plan = svg2_plan(q, k, config=CFG, cache=cache, key=jax.random.key(0))[0]
    with pytest.raises(ValueError, match="query_tiles='paged' runs the Mosaic GPU kernel only"):
        apply_svg2_plan(q, k, v, plan, query_tiles="paged", implementation="pallas_triton", interpret=True)
    np.testing.assert_array_equal(
        apply_svg2_plan(q, k, v, plan, query_tiles="paged", implementation="xla"),
        apply_svg2_plan(q, k, v, plan, query_tiles="fixed", implementation="xla"),
    )


def test_apply_plan_rejects_unknown_query_tiles():
    q, k, v = _qkv(5, 1, 16, 1, 8)
    cache = SVG2Cache.create(1, 1, 1, CFG, 8).layer(0)
    plan = svg2_plan(q, k, config=CFG, cache=cache, key=jax.random.key(0))[0]
    with pytest.raises(ValueError, match="query_tiles must be one of"):
        apply_svg2_plan(q, k, v, plan, query_tiles="cluster")


@pytest.mark.parametrize("paged", [False, True])
def test_auto_query_tiles_follow_the_map(paged):
    """"auto" aligns the tiles where neighbouring query clusters select unlike key clusters (a random
    map: fixed tiles compute unions, masked), and lists key pages there when it may (the Mosaic path: short
    runs of selected key rows waste less in pages than in 64-row chunks), but keeps fixed tiles where
    neighbours select alike (equal rows in long bands: no masks, few run edges)."""
    rng = np.random.default_rng(0)
    b, h, n, cq, ck = 1, 2, 4000, 20, 60
    qs = jnp.asarray(np.full((b, h, cq), n // cq), jnp.int32)
    ks = jnp.asarray(np.full((b, h, ck), n // ck), jnp.int32).at[..., 0].add(n - (n // ck) * ck)
    random_map = jnp.asarray(rng.random((b, h, cq, ck)) < 0.3)
    bands = np.arange(ck) // 20 == (np.arange(cq) // 7)[:, None]  # 3 bands of alike query clusters
    banded = jnp.asarray(np.broadcast_to(bands, (b, h, cq, ck)))
    q = jnp.zeros((b, n, h, 128), jnp.bfloat16)
    choose = {}
    for name, cmap in (("random", random_map), ("banded", banded)):
        _, tiles = cluster_plan_for(q, q, qs, ks, cmap, implementation="pallas_mosaic")
        al = align_query_clusters(qs, cmap, num_q=n, block_q=tiles.block_q) if paged else None
        costs = svg2.query_tiling_costs(tiles, qs, ks, cmap, num_tokens=n, aligned=al)
        assert costs.shape == (3 if paged else 2,)
        choose[name] = svg2.QUERY_TILINGS[int(jnp.argmin(costs))]
    assert choose == {"random": "paged" if paged else "aligned", "banded": "fixed"}


def test_top_p_one_is_dense():
    cfg = SVG2Config(**{**BASE, "top_p": 1.0, "min_k_cluster_ratio": 0.0})
    q, k, v = _qkv(4, 1, 40, 2, 8)
    cache = SVG2Cache.create(1, 1, 2, cfg, 8).layer(0)
    text = TextTokens("last", 4, jnp.array([4]))
    out, _, stats = jax.jit(lambda q, k, v: svg2_attention(q, k, v, config=cfg, cache=cache,
                                                           key=jax.random.key(0), text=text))(q, k, v)
    np.testing.assert_allclose(out, masked_attention_reference(q, k, v), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(stats.density, 1.0)


@pytest.mark.parametrize("ratio", [0.13, 0.3, 0.6])
def test_token_floor_fixes_the_density(ratio):
    """With top_p near 0 the min_k_token_ratio floor alone sets the density: every query cluster keeps
    the most probable key clusters until they hold ``ratio`` of the keys, and one fewer would not."""
    b, n, h, d = 1, 96, 3, 8
    cfg = SVG2Config(**{**BASE, "num_k_clusters": 12, "top_p": 1e-6, "min_k_cluster_ratio": 0.0,
                        "min_k_token_ratio": ratio})
    q, k, v = _qkv(11, b, n, h, d)
    cache = SVG2Cache.create(1, b, h, cfg, d).layer(0)
    plan_fn = jax.jit(lambda q, k: svg2_plan(q, k, config=cfg, cache=cache, key=jax.random.key(3)))
    plan, _, stats = plan_fn(q, k)
    cmap, sizes = np.asarray(plan.cluster_map), np.asarray(plan.k_cluster_sizes)
    kept = (cmap * sizes[..., None, :]).sum(-1)  # [B, H, Cq] key tokens each query cluster keeps
    assert (kept >= ratio * n).all()
    # Dropping the least probable kept cluster of a row would fall short of the floor.
    probs = np.where(cmap, np.asarray(plan.probs), np.inf)
    weakest = np.take_along_axis(sizes[..., None, :].repeat(cmap.shape[-2], -2),
                                 probs.argmin(-1)[..., None], -1)[..., 0]
    assert (kept - weakest < ratio * n).all()
    q_sizes = np.asarray(plan.q_cluster_sizes)
    np.testing.assert_allclose(stats.density, (q_sizes * kept).sum(-1) / n**2, rtol=1e-6)
    assert (np.asarray(stats.density) >= ratio).all()
    with pytest.raises(ValueError, match=r"SVG2Config.min_k_token_ratio must be a float in \[0, 1\]"):
        SVG2Config(**{**BASE, "min_k_token_ratio": 1.5})


def test_cold_then_warm_and_layer_scan():
    """A cold call warms the cache; later calls warm-start; a layer scan slices the stacked cache."""
    b, n, h, d, layers = 1, 40, 2, 8, 2
    q, k, v = _qkv(5, b, n, h, d)
    cache = SVG2Cache.create(layers, b, h, CFG, d)
    assert cache.q_centroids.shape == (layers, b, h, 4, d) and cache.k_centroids.shape == (layers, b, h, 8, d)

    @jax.jit
    def step(cache, key):
        def layer(x, c):
            out, c2, st = svg2_attention(x, k, v, config=CFG, cache=c, key=key)
            return out, (c2, st.q_kmeans_iters)
        x, (cache, iters) = jax.lax.scan(layer, q, cache)
        return x, cache, iters

    _, cache1, iters1 = step(cache, jax.random.key(0))
    assert bool(cache1.warm.all())
    _, cache2, iters2 = step(cache1, jax.random.key(1))
    assert (np.asarray(iters2) <= CFG.kmeans_warm_iters).all()
    assert (np.asarray(iters1) >= 1).all()
    one = cache2.with_layer(1, cache.layer(0))
    assert not bool(one.warm[1]) and bool(one.warm[0])


def _mixture(seed: int, b: int, n: int, h: int, d: int, comps: int):
    """Q and K drawn from the same few 'semantic' Gaussian components (so they are correlated)."""
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(seed), 5)
    mu = jax.random.normal(k1, (b, h, comps, d))
    q = jnp.take_along_axis(mu, jax.random.randint(k2, (b, h, n), 0, comps)[..., None], 2)
    k = jnp.take_along_axis(mu, jax.random.randint(k3, (b, h, n), 0, comps)[..., None], 2)
    q = q + jax.random.normal(k4, q.shape)  # [B, H, N, D]
    k = k + jax.random.normal(k5, k.shape)
    return jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2)  # [B, N, H, D]


def test_structured_input_recall():
    cfg = SVG2Config(**{**BASE, "num_q_clusters": 8, "num_k_clusters": 16, "top_p": 0.9,
                        "min_k_cluster_ratio": 0.1, "kmeans_init_iters": 20})
    b, n, h, d = 1, 512, 2, 32
    q, k = _mixture(0, b, n, h, d, comps=4)
    plan, _, stats = jax.jit(lambda q, k: svg2_plan(
        q, k, config=cfg, cache=SVG2Cache.create(1, b, h, cfg, d).layer(0), key=jax.random.key(1)))(q, k)
    probs = jax.nn.softmax(jnp.einsum("bnhd,bmhd->bhnm", q, k) / np.sqrt(d), axis=-1)  # true attention
    mask = _element_mask(plan, None, b)
    captured = np.asarray(jnp.sum(jnp.where(mask, probs, 0.0), -1).mean(-1))  # [B, H]
    density = np.asarray(stats.density)
    assert (captured >= 0.9 * cfg.top_p).all(), captured
    assert (density <= 0.4).all(), density


def test_jit_without_host_transfers():
    b, n, h, d = 1, 36, 2, 8
    text = TextTokens("last", 4, jnp.array([3], jnp.int32))
    q, k, v = _qkv(6, b, n, h, d)
    cache = SVG2Cache.create(1, b, h, CFG, d).layer(0)
    key = jax.random.key(0)
    fn = jax.jit(lambda q, k, v, c, key, t: svg2_attention(q, k, v, config=CFG, cache=c, key=key, text=t))
    with jax.transfer_guard("disallow"):
        out, cache, stats = fn(q, k, v, cache, key, text)
        out, cache, stats = fn(q, k, v, cache, key, text)  # warm path
        jax.block_until_ready((out, cache, stats))
    assert np.isfinite(np.asarray(out)).all()
    assert int(stats.q_kmeans_iters) <= CFG.kmeans_warm_iters


def test_bf16_runs_and_is_close_to_masked_dense():
    b, n, h, d = 1, 40, 2, 16
    q, k, v = _qkv(7, b, n, h, d, jnp.bfloat16)
    cache = SVG2Cache.create(1, b, h, CFG, d).layer(0)
    plan, _, _ = jax.jit(lambda q, k: svg2_plan(q, k, config=CFG, cache=cache, key=jax.random.key(0)))(q, k)
    out = jax.jit(lambda q, k, v: apply_svg2_plan(q, k, v, plan))(q, k, v)
    ref = masked_attention_reference(q, k, v, _element_mask(plan, None, b))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "n, text",
    [
        (2048, None),  # whole query tiles: only k, v get padding rows
        (1990, TextTokens("first", 13)),  # ragged, text first: gathered inline, padded by the gather
        (2001, TextTokens("last", 7, jnp.array([5], jnp.int32))),
    ],
)
@pytest.mark.parametrize("query_tiles", ["auto", "paged"])
def test_pipeline_compiled_gpu(n, text, query_tiles):
    cfg = SVG2Config(**{**BASE, "num_q_clusters": 16, "num_k_clusters": 64, "query_tiles": query_tiles})
    b, h, d = 1, 4, 128
    q, k, v = _qkv(8, b, n, h, d, jnp.bfloat16)
    cache = SVG2Cache.create(1, b, h, cfg, d).layer(0)
    opts = dict(config=cfg, cache=cache, key=jax.random.key(0), text=text)
    fn = jax.jit(lambda q, k, v: (svg2_attention(q, k, v, **opts), svg2_plan(q, k, **opts)[0]))
    (out, _, stats), plan = fn(q, k, v)
    assert 0 <= int(stats.query_tiling) < len(svg2.QUERY_TILINGS)  # "auto": one of the three ran
    ref = apply_svg2_plan(q, k, v, plan, text=text, implementation="xla")
    err = np.linalg.norm(np.asarray(out, np.float32) - np.asarray(ref, np.float32))
    assert err / np.linalg.norm(np.asarray(ref, np.float32)) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("query_tiles", ["aligned", "paged"])
def test_pipeline_half_tiles_gpu(monkeypatch, query_tiles):
    """``svg2.HALF_TILES``: the last tile of a query cluster with at most 64 rows runs on one warpgroup; its
    padding rows go unwritten, and the restored output is still the plan's attention."""
    monkeypatch.setattr(svg2, "HALF_TILES", True)
    cfg = SVG2Config(**{**BASE, "num_q_clusters": 16, "num_k_clusters": 64, "query_tiles": query_tiles})
    b, n, h, d = 1, 2001, 4, 128
    text = TextTokens("last", 7, jnp.array([5], jnp.int32))
    q, k, v = _qkv(9, b, n, h, d, jnp.bfloat16)
    cache = SVG2Cache.create(1, b, h, cfg, d).layer(0)
    opts = dict(config=cfg, cache=cache, key=jax.random.key(0), text=text)
    fn = jax.jit(lambda q, k, v: (svg2_attention(q, k, v, **opts), svg2_plan(q, k, **opts)[0]))
    (out, _, _), plan = fn(q, k, v)
    ref = apply_svg2_plan(q, k, v, plan, text=text, implementation="xla")
    assert np.isfinite(np.asarray(out, np.float32)).all()
    err = np.linalg.norm(np.asarray(out, np.float32) - np.asarray(ref, np.float32))
    assert err / np.linalg.norm(np.asarray(ref, np.float32)) < 2e-2
