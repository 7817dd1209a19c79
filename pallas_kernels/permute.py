"""Per-(batch, head) token gather: ``out[b, m, h] = x[b, src[b, h, m], h]`` for several arrays at once.

SVG1 moves each temporal head's tokens from frame-major to token-major order (and back) while spatial
heads stay in place; with one index row per ``(b, h)`` both cases are a single gather. The Pallas kernel
handles one ``(row block, batch, head)`` per program: it loads ``block_rows`` source indices and gathers
those rows of every operand (the whole ``[N, D]`` slice of the head is a pointer in Triton, so only the
gathered rows are read). Sharing the index load across q, k and v is the fusion the kernel buys.
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Float, Int

from . import checks
from .common import pad_axis, resolve_implementation


@dataclasses.dataclass(frozen=True, kw_only=True)
class PermuteConfig:
    """Launch knobs of the Triton gather; they change speed, never the result."""

    block_rows: int = 64
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self):
        checks.check_block_size("block_rows", self.block_rows)
        checks.check_triton_launch(self.num_warps, self.num_stages)


def permute_tokens_reference(
    xs: Sequence[Float[Array, "B N H D"]], src: Int[Array, "B H M"]
) -> tuple[Float[Array, "B M H D"], ...]:
    """Oracle: ``jnp.take_along_axis`` along the token axis with a per-(batch, head) index."""
    idx = jnp.transpose(src, (0, 2, 1))[..., None]  # [B, M, H, 1]
    return tuple(jnp.take_along_axis(x, idx, axis=1) for x in xs)


def _kernel(src_ref, *refs, num_arrays: int):
    rows = src_ref[...]  # [bm] source token of each output row
    for x_ref, o_ref in zip(refs[:num_arrays], refs[num_arrays:], strict=True):
        o_ref[...] = x_ref[rows, :]  # [bm, D] row gather


def _call(src, xs, *, block_rows: int, config: PermuteConfig, interpret: bool):
    """Launch on ``src`` ``[B, H, Mp]`` (``Mp`` a multiple of ``block_rows``) and ``[B, N, H, Dp]`` arrays."""
    b, h, m_pad = src.shape
    n, d = xs[0].shape[1], xs[0].shape[3]
    x_spec = pl.BlockSpec((None, n, None, d), lambda i, bi, hi: (bi, 0, hi, 0))
    o_spec = pl.BlockSpec((None, block_rows, None, d), lambda i, bi, hi: (bi, i, hi, 0))
    return pl.pallas_call(
        functools.partial(_kernel, num_arrays=len(xs)),
        grid=(m_pad // block_rows, b, h),
        in_specs=[pl.BlockSpec((None, None, block_rows), lambda i, bi, hi: (bi, hi, i))] + [x_spec] * len(xs),
        out_specs=[o_spec] * len(xs),
        out_shape=[jax.ShapeDtypeStruct((b, m_pad, h, d), x.dtype) for x in xs],
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
        interpret=interpret,
        name="permute_tokens",
    )(src, *xs)


def _row_block(m: int, block_rows: int) -> int:
    """Largest power of two ≤ ``block_rows`` (and ≥ 8) dividing ``m``, else ``block_rows`` (then padded)."""
    size = block_rows
    while size >= 8:
        if m % size == 0:
            return size
        size //= 2
    return block_rows


def permute_tokens(
    xs: Sequence[Float[Array, "B N H D"]],
    src: Int[Array, "B H M"],
    *,
    implementation: str = "auto",
    interpret: bool | None = None,
    config: PermuteConfig | None = None,
) -> tuple[Float[Array, "B M H D"], ...]:
    """Gather tokens per (batch, head): ``out[b, m, h, :] = x[b, src[b, h, m], h, :]`` for each ``x``.

    All ``xs`` share one shape ``[B, N, H, D]`` and dtype. ``src`` values must lie in ``[0, N)`` (checked on
    concrete inputs; under ``jit`` out-of-range rows are clamped by the XLA gather and unchecked in the
    kernel). ``implementation``: ``"xla"`` (``take_along_axis``), ``"pallas_triton"`` or ``"auto"``
    (Triton on GPU, XLA on CPU).
    """
    xs = tuple(xs)
    if not xs:
        raise ValueError("xs must hold at least one array; got an empty sequence")
    for i, x in enumerate(xs):
        if x.ndim != 4:
            raise ValueError(f"xs[{i}] must have rank 4 [B, N, H, D]; got shape {x.shape}")
        if x.shape != xs[0].shape or x.dtype != xs[0].dtype:
            raise ValueError(
                f"all xs must share shape and dtype; xs[0] is {xs[0].shape} {xs[0].dtype}, "
                f"xs[{i}] is {x.shape} {x.dtype}"
            )
    b, n, h, d = xs[0].shape
    if src.ndim != 3:
        raise ValueError(f"src must have rank 3 [B, H, M]; got shape {src.shape}")
    checks.check_int_array("src", src, (b, h, src.shape[2]))
    checks.check_value_range("src", src, 0, n, f"token indices into N={n}")
    impl = resolve_implementation(implementation)
    if impl == "xla":
        return permute_tokens_reference(xs, src)

    interpret = (jax.default_backend() != "gpu") if interpret is None else interpret
    config = config or PermuteConfig()
    m = src.shape[2]
    block_rows = _row_block(m, config.block_rows)
    m_pad = -(-m // block_rows) * block_rows
    dp = max(16, pl.next_power_of_2(d))  # Triton tiles need power-of-two sizes
    src_p = pad_axis(jnp.clip(src.astype(jnp.int32), 0, n - 1), 2, m_pad)
    outs = _call(
        src_p, [pad_axis(x, 3, dp) for x in xs], block_rows=block_rows, config=config, interpret=interpret
    )
    return tuple(o[:, :m, :, :d] for o in outs)
