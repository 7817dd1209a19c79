"""Input validation shared by the sparse-attention entry points.

Every check raises ``ValueError`` naming the argument, what was expected and what arrived. Value checks
(index ranges, cluster sizes summing to N) need concrete arrays: they run when the arrays are concrete
(eager calls) and are skipped under ``jax.jit``, where the kernels clamp indices so that they never read
out of bounds.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "xla", "pallas_triton", "pallas_mosaic")
FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def check_triton_launch(num_warps, num_stages) -> None:
    """The launch knobs every Triton config carries: warps per program and software-pipeline stages."""
    if num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps={num_warps!r} must be one of 1, 2, 4, 8, 16")
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages={num_stages!r} must be an int >= 1")


def default_sm_scale(q: jax.Array) -> float:
    return 1.0 / math.sqrt(q.shape[-1])


def is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def check_qkv(q, k, v) -> None:
    """Check the ``[B, N, H, D]`` / ``[B, M, H, D]`` attention operands."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must have rank 4 [B, N, H, D]; got shape {x.shape}")
        if x.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16 or float16; got {x.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape [B, M, H, D]; got {k.shape=} and {v.shape=}")
    b, _, h, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, h, d):
        raise ValueError(
            f"q and k must agree on batch, heads and head dim (B, H, D); got {q.shape=} and {k.shape=}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[1] == 0 or k.shape[1] == 0:
        raise ValueError(f"sequence lengths must be positive; got N={q.shape[1]}, M={k.shape[1]}")


def check_int_array(name: str, x, shape: tuple[int, ...]) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer array (int32); got dtype {x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(x.shape)}")


def check_implementation(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")


def check_block_size(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 16 (Triton tiles); got {value!r}")


def check_value_range(name: str, x, lo: int, hi: int, hint: str) -> None:
    """Check ``lo <= x < hi`` elementwise when ``x`` is concrete."""
    if not is_concrete(x) or x.size == 0:
        return
    xs = np.asarray(x)
    bad = (xs < lo) | (xs >= hi)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must lie in [{lo}, {hi}) ({hint}); found {int(xs[where])} at index {where}")


def check_sizes_sum(name: str, sizes, total: int, axis_name: str) -> None:
    """Check non-negative cluster sizes summing to the sequence length, when concrete."""
    if not is_concrete(sizes):
        return
    s = np.asarray(sizes)
    if (s < 0).any():
        where = tuple(int(i) for i in np.argwhere(s < 0)[0])
        raise ValueError(f"{name} must be non-negative; found {int(s[where])} at index {where}")
    sums = s.sum(axis=-1)
    if (sums != total).any():
        where = tuple(int(i) for i in np.argwhere(sums != total)[0])
        raise ValueError(
            f"{name} must sum to {axis_name}={total} along the last axis; "
            f"the sizes at (batch, head)={where} sum to {int(sums[where])}"
        )


def check_key_padding(key_padding, batch: int, num_k: int) -> None:
    """``key_padding`` is int ``[B, 2]`` ranges ``0 <= start <= end <= M`` (checked when concrete)."""
    check_int_array("key_padding", key_padding, (batch, 2))
    if is_concrete(key_padding):
        check_value_range("key_padding", key_padding, 0, num_k + 1, f"[start, end) ranges within M={num_k}")
        rows = np.asarray(key_padding)
        if (rows[:, 0] > rows[:, 1]).any():
            raise ValueError(f"key_padding rows must be [start, end) with start <= end; got {rows.tolist()}")
