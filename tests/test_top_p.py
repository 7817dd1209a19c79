"""top_p_mask (SVG2's top-p cluster selection by threshold search) against its sort-based oracle.

Dyadic probabilities (multiples of 1/64, sums exact in float32) make ties and preceding masses landing
exactly on ``top_p`` exact, so there the kernel must equal the oracle bit for bit. On general float
probabilities the two may differ only where a preceding mass is within rounding of ``top_p``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from svg_jax.pallas_kernels import TopPConfig, top_p_mask, top_p_mask_reference
from svg_jax.topp import top_p_cluster_map

mask_jit = jax.jit(
    top_p_mask,
    static_argnames=("top_p", "min_clusters", "min_weight", "implementation", "interpret", "config"),
)
reference_jit = jax.jit(top_p_mask_reference, static_argnames=("top_p", "min_clusters", "min_weight"))


def _dyadic(seed: int, rows: int, cols: int, zero_frac: float = 0.3) -> np.ndarray:
    """Rows of multiples of 1/64 with many exact ties and zeros (not normalised: any mass works)."""
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 6, size=(rows, cols)).astype(np.float32) / 64
    p[rng.random((rows, cols)) < zero_frac] = 0.0
    return p


def _preceding_mass(probs: np.ndarray) -> np.ndarray:
    """Exact (float64) mass preceding each entry in the descending, index-stable order."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    before = np.cumsum(np.take_along_axis(probs.astype(np.float64), order, -1), -1)
    before = np.concatenate([np.zeros_like(before[..., :1]), before[..., :-1]], -1)
    out = np.empty_like(before)
    np.put_along_axis(out, order, before, -1)
    return out


@given(
    rows=st.integers(1, 20),
    cols=st.integers(1, 70),
    top_p=st.sampled_from([1 / 64, 0.25, 0.5, 0.75, 0.9, 1.5]),
    min_frac=st.sampled_from([0.0, 0.1, 0.5]),
    block_rows=st.sampled_from([1, 4, 8]),
    seed=st.integers(0, 2**16),
)
def test_matches_oracle_exactly_on_dyadic_rows(rows, cols, top_p, min_frac, block_rows, seed):
    p = jnp.asarray(_dyadic(seed, rows, cols))
    m = int(min_frac * cols)
    out = mask_jit(
        p,
        top_p=top_p,
        min_clusters=m,
        implementation="pallas_triton",
        interpret=True,
        config=TopPConfig(block_rows=block_rows),
    )
    ref = reference_jit(p, top_p=top_p, min_clusters=m)
    np.testing.assert_array_equal(out, ref)


@given(
    groups=st.integers(1, 3),
    rows=st.integers(1, 8),
    cols=st.integers(1, 70),
    top_p=st.sampled_from([1 / 64, 0.5, 2.0]),
    weight_frac=st.sampled_from([0.01, 0.13, 0.3, 1.0, 2.0]),
    per_group=st.booleans(),
    min_clusters=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_weight_floor_matches_oracle_exactly(
    groups, rows, cols, top_p, weight_frac, per_group, min_clusters, seed
):
    """Integer weights (cluster sizes, many zero) sum exactly: the kernel's floor equals the sort's."""
    rng = np.random.default_rng(seed)
    p = jnp.asarray(_dyadic(seed, groups * rows, cols)).reshape(groups, rows, cols)
    w = rng.integers(0, 20, size=(groups, 1 if per_group else rows, cols)).astype(np.float32)
    w[rng.random(w.shape) < 0.2] = 0.0
    min_weight = float(weight_frac * max(w.sum(-1).mean(), 1.0))
    opts = dict(top_p=top_p, min_clusters=min_clusters, min_weight=min_weight)
    out = mask_jit(p, weights=jnp.asarray(w), **opts, implementation="pallas_triton", interpret=True)
    ref = reference_jit(p, weights=jnp.asarray(w), **opts)
    np.testing.assert_array_equal(out, ref)
    # The floor's own promise: each row keeps at least min_weight, or all it has.
    full = np.broadcast_to(w, p.shape)
    kept = np.where(np.asarray(out), full, 0).sum(-1)
    assert (kept >= np.minimum(min_weight, full.sum(-1))).all()


def test_weight_floor_by_hand():
    p = jnp.asarray([[0.5, 0.25, 0.125, 0.125, 0.0]])
    w = jnp.asarray([[1.0, 5.0, 0.0, 5.0, 9.0]])
    opts = dict(top_p=0.01, implementation="pallas_triton", interpret=True)
    floor = lambda mw: np.asarray(mask_jit(p, weights=w, min_weight=mw, **opts))[0]
    np.testing.assert_array_equal(floor(1.0), [True, False, False, False, False])  # 1 >= 1 after the first
    np.testing.assert_array_equal(floor(3.0), [True, True, False, False, False])  # crossing entry kept
    np.testing.assert_array_equal(floor(6.5), [True, True, True, True, False])  # the empty one on the way
    np.testing.assert_array_equal(floor(100.0), [True] * 5)  # short of the floor: the whole row
    np.testing.assert_array_equal(floor(0.0), [True, False, False, False, False])  # no floor
    # Tied entries take the floor in index order with their own weights.
    tied = mask_jit(
        jnp.full((1, 4), 0.25), weights=jnp.asarray([[4.0, 1.0, 2.0, 3.0]]), min_weight=5.5, **opts
    )
    np.testing.assert_array_equal(tied, [[True, True, True, False]])


def test_ties_boundary_floor_and_degenerate_rows():
    p = jnp.asarray(
        [
            [0.25, 0.25, 0.25, 0.25, 0.0, 0.0],  # ties: before = 0, .25, .5, .75
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all zero: the whole row's mass (0) is <= top_p
            [0.5, 0.0, 0.25, 0.0, 0.25, 0.0],  # crossing entry kept, zeros after the mass is spent
            [0.125, 0.125, 0.125, 0.125, 0.125, 0.125],  # mass 0.75 < top_p: all kept
        ]
    )
    out = mask_jit(p, top_p=0.5, min_clusters=0, implementation="pallas_triton", interpret=True)
    np.testing.assert_array_equal(
        out,
        [
            [True, True, True, False, False, False],  # third tie's before is exactly top_p: kept
            [True] * 6,
            [True, False, True, False, False, False],
            [True, True, True, True, True, False],  # before of the sixth = 0.625 > 0.5
        ],
    )
    # The floor keeps the first ranks (ties by index) even past top_p.
    floor = mask_jit(p, top_p=0.01, min_clusters=2, implementation="pallas_triton", interpret=True)
    np.testing.assert_array_equal(floor[0], [True, True, False, False, False, False])
    np.testing.assert_array_equal(floor[2], [True, False, True, False, False, False])
    np.testing.assert_array_equal(floor, reference_jit(p, top_p=0.01, min_clusters=2))
    # A floor of every column keeps everything without running a kernel.
    assert bool(top_p_mask(p, top_p=0.3, min_clusters=6, implementation="pallas_triton").all())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_softmax_rows_agree_off_the_rounding_boundary(dtype):
    """Random softmax rows with leading batch axes: any disagreement is an entry whose preceding mass is
    within float32 rounding of top_p."""
    logits = jax.random.normal(jax.random.key(1), (2, 3, 7, 130)) * 3
    p = jax.nn.softmax(logits, axis=-1).at[..., :5].set(0.0).astype(dtype)
    out = mask_jit(p, top_p=0.9, min_clusters=13, implementation="pallas_triton", interpret=True)
    ref = reference_jit(p.astype(jnp.float32), top_p=0.9, min_clusters=13)
    before = _preceding_mass(np.asarray(p.astype(jnp.float32)))
    differ = np.asarray(out) != np.asarray(ref)
    assert not (differ & (np.abs(before - 0.9) > 1e-5)).any()
    assert out.shape == p.shape and out.dtype == jnp.bool_


def test_cluster_map_dispatches_to_the_kernel():
    p = jnp.asarray(_dyadic(7, 12, 40)).reshape(1, 2, 6, 40)
    opts = dict(top_p=0.5, min_clusters=4)
    ref = top_p_cluster_map(p, **opts, implementation="xla")
    out = top_p_cluster_map(p, **opts, implementation="pallas_triton", interpret=True)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(probs=jnp.zeros((3, 0))), ValueError, r"probs must have shape \[\.\.\., C\] with C >= 1"),
        (dict(probs=jnp.zeros((3, 4), jnp.int32)), ValueError, "probs must be float32, bfloat16 or float16"),
        (dict(probs=jnp.asarray([[0.5, -0.1]])), ValueError, "probs must be non-negative"),
        (dict(top_p=0.0), ValueError, "top_p must be a float > 0"),
        (dict(min_clusters=-1), ValueError, "min_clusters must be an int >= 0"),
        (dict(min_weight=-1.0), ValueError, "min_weight must be a float >= 0"),
        (dict(min_weight=2.0), ValueError, "min_weight > 0 needs weights"),
        (
            dict(weights=jnp.ones((3, 4)), min_weight=2.0),
            ValueError,
            "weights must broadcast to probs' shape",
        ),
        (
            dict(weights=jnp.asarray([1.0, -1.0, 0.0, 0.0]), min_weight=2.0),
            ValueError,
            "weights must be non-negative",
        ),
        (dict(implementation="pallas_mosaic"), NotImplementedError, "top_p_mask has no Mosaic GPU kernel"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = dict(probs=jnp.full((2, 4), 0.25), top_p=0.5, min_clusters=0, implementation="xla")
    with pytest.raises(error, match=match):
        top_p_mask(**{**args, **kwargs})
    with pytest.raises(ValueError, match="block_rows must be a power of two"):
        TopPConfig(block_rows=3)


@pytest.mark.gpu
def test_compiled_at_the_wan_shape():
    """40 heads × 300 query clusters × 1000 key clusters, compiled; plus the dyadic exactness check."""
    logits = jax.random.normal(jax.random.key(2), (1, 40, 300, 1000)) * 4
    p = jax.nn.softmax(logits, axis=-1).at[..., ::7].set(0.0)
    out = top_p_mask(p, top_p=0.9, min_clusters=100, implementation="pallas_triton")
    ref = top_p_mask_reference(p, top_p=0.9, min_clusters=100)
    before = _preceding_mass(np.asarray(p))
    differ = np.asarray(out) != np.asarray(ref)
    assert not (differ & (np.abs(before - 0.9) > 1e-5)).any(), int(differ.sum())
    d = jnp.asarray(_dyadic(3, 3000, 1000))
    for top_p, m in ((0.5, 0), (0.9, 100), (3.0, 10)):
        np.testing.assert_array_equal(
            top_p_mask(d, top_p=top_p, min_clusters=m, implementation="pallas_triton"),
            top_p_mask_reference(d, top_p=top_p, min_clusters=m),
        )
    # The token floor of SVG2's fixed-density setting: cluster sizes shared by each head's rows.
    sizes = jax.random.randint(jax.random.key(4), (1, 40, 1, 1000), 0, 160).astype(jnp.float32)
    opts = dict(top_p=1e-6, weights=sizes, min_weight=0.13 * 75600)
    np.testing.assert_array_equal(
        top_p_mask(p, **opts, implementation="pallas_triton"), top_p_mask_reference(p, **opts)
    )
