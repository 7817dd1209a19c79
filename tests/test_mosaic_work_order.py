"""The persistent Mosaic engine's work list (pure XLA, runs everywhere)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svg_jax.pallas_kernels.work_order import ORDERS, work_order


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 4),
    nqt=st.integers(1, 9),
    high=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_every_order_is_a_permutation_with_its_promise(b, h, nqt, high, seed):
    counts = jax.random.randint(jax.random.key(seed), (b, h, nqt), 0, high + 1, jnp.int32)
    flat = np.asarray(counts).reshape(-1)
    programs = 1 + seed % 5
    for order in ORDERS:
        got = np.asarray(work_order(counts, order, programs=programs))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(np.sort(got), np.arange(b * h * nqt))  # every item exactly once
        heads = got // nqt
        if order in ("head", "head_lpt"):  # head by head: the CTAs running together share K and V
            assert np.all(np.diff(heads) >= 0)
        if order == "head_lpt":  # inside a head, the longest lists first
            for bh in range(b * h):
                assert np.all(np.diff(flat[got[heads == bh]]) <= 0)
        if order == "head_snake":  # head_lpt with every second round of `programs` positions reversed
            lpt = np.asarray(work_order(counts, "head_lpt"))
            for r, start in enumerate(range(0, lpt.size, programs)):
                block = lpt[start : start + programs]
                np.testing.assert_array_equal(got[start : start + programs], block[::-1] if r % 2 else block)
        if order == "lpt":
            assert np.all(np.diff(flat[got]) <= 0)
        if order == "interleave":  # query tile by query tile, heads inside
            tiles = got % nqt
            assert np.all(np.diff(tiles.reshape(b, -1), axis=1) >= 0)


def test_unknown_order_is_refused():
    with pytest.raises(ValueError, match="order must be one of"):
        work_order(jnp.zeros((1, 1, 2), jnp.int32), "random")


def test_cost_ranks_the_items():
    counts = jnp.array([[[3, 3, 1, 2]]], jnp.int32)
    cost = jnp.array([[[1.0, 5.0, 9.0, 2.0]]])
    np.testing.assert_array_equal(work_order(counts, "head_lpt", cost=cost), [2, 1, 3, 0])
    np.testing.assert_array_equal(work_order(counts, "head_lpt"), [0, 1, 3, 2])  # ties keep item order
    np.testing.assert_array_equal(work_order(counts, "head_snake", programs=3, cost=cost), [2, 1, 3, 0])
    np.testing.assert_array_equal(work_order(counts, "head_snake", programs=2, cost=cost), [2, 1, 0, 3])


def test_bad_order_arguments_are_refused():
    counts = jnp.zeros((1, 1, 2), jnp.int32)
    with pytest.raises(ValueError, match="needs programs"):
        work_order(counts, "head_snake")
    with pytest.raises(ValueError, match="cost must have the shape"):
        work_order(counts, "head_lpt", cost=jnp.zeros((2,)))
