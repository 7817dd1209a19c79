"""k-means assignment (SVG2's "FlashAssign"): fused squared-L2 distances + argmin, lowered through Triton.

One Pallas program owns ``block_n`` rows of one group. It keeps its ``[block_n, D]`` tile of ``x`` in
registers and streams the group's centroids in ``block_k`` tiles, computing
``‖x‖² + ‖c‖² − 2·x·c`` with a float32-accumulating dot and keeping a running minimum and argmin. The
``[N, K]`` distance matrix therefore never exists in HBM; only ``[N]`` labels and distances are written.

Ragged sizes: ``K`` is padded to a multiple of ``block_k`` with centroids at ``+inf`` distance; ``N`` is
*not* padded (that would copy ``x``): the last row tile is shifted back to end at row ``N`` and
overlaps its neighbour, whose rows it recomputes bit-identically.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Float, Int

from . import checks
from .common import dot_precision, pad_axis, padded_head_dim, resolve_implementation
from .kmeans_mosaic import kmeans_assign_mosaic, kmeans_mosaic_supports
from .kmeans_reference import kmeans_assign_reference, rounded_centroids

_INT32_MAX = jnp.iinfo(jnp.int32).max


@dataclasses.dataclass(frozen=True, kw_only=True)
class KMeansAssignConfig:
    """Tiles and launch knobs of the assignment kernel; they change speed, never the labels."""

    block_n: int = 128
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        checks.check_block_size("block_n", self.block_n)
        checks.check_block_size("block_k", self.block_k)
        checks.check_triton_launch(self.num_warps, self.num_stages)


def _kernel(
    x_ref, c_ref, cc_ref, label_ref, dist_ref, *, block_n: int, block_k: int, num_rows: int, num_k_blocks: int
):
    # Shift the last tile back so that it ends at row N (no padding of x; overlapping rows agree).
    start = jnp.minimum(pl.program_id(0) * block_n, num_rows - block_n)
    x = x_ref[pl.ds(start, block_n), :]  # [bn, Dp]
    xf = x.astype(jnp.float32)
    xx = jnp.sum(xf * xf, axis=1)  # [bn]

    def body(j, carry):
        best_d, best_i = carry
        k0 = pl.multiple_of(j * block_k, block_k)
        c = c_ref[pl.ds(k0, block_k), :]  # [bk, Dp]
        cc = cc_ref[pl.ds(k0, block_k)]  # [bk], +inf on padded centroids
        xc = jax.lax.dot_general(
            x,
            c,
            (((1,), (1,)), ((), ())),
            precision=dot_precision(x.dtype),
            preferred_element_type=jnp.float32,
        )  # [bn, bk]
        d = xx[:, None] + cc[None, :] - 2.0 * xc
        tile_min = jnp.min(d, axis=1)  # [bn]
        cols = k0 + jax.lax.broadcasted_iota(jnp.int32, (block_n, block_k), 1)
        tile_arg = jnp.min(jnp.where(d == tile_min[:, None], cols, _INT32_MAX), axis=1)  # lowest index
        better = tile_min < best_d  # strict: an earlier tile keeps its ties
        return jnp.where(better, tile_min, best_d), jnp.where(better, tile_arg, best_i)

    init = (jnp.full((block_n,), jnp.inf, jnp.float32), jnp.zeros((block_n,), jnp.int32))
    best_d, best_i = jax.lax.fori_loop(0, num_k_blocks, body, init)
    label_ref[pl.ds(start, block_n)] = best_i
    dist_ref[pl.ds(start, block_n)] = best_d


def _call(x, c, cc, *, block_n: int, block_k: int, config: KMeansAssignConfig, interpret: bool):
    """Launch on x ``[G, N, Dp]`` or token-major ``[B, N, H, Dp]`` (N >= block_n; group ``g = b·H + h``),
    c ``[G, Kp, Dp]`` and cc ``[G, Kp]`` (Kp % block_k == 0). Returns ``[G, N]`` labels and distances."""
    n, dp = x.shape[1], x.shape[-1]
    g, kp = c.shape[0], c.shape[1]
    if x.ndim == 3:
        x_spec = pl.BlockSpec((None, n, dp), lambda i, gi: (gi, 0, 0))
    else:  # one group's rows are strided H·Dp apart: read in place, no transpose
        heads = x.shape[2]
        x_spec = pl.BlockSpec((None, n, None, dp), lambda i, gi: (gi // heads, 0, gi % heads, 0))
    kernel = functools.partial(
        _kernel, block_n=block_n, block_k=block_k, num_rows=n, num_k_blocks=kp // block_k
    )
    return pl.pallas_call(
        kernel,
        grid=(pl.cdiv(n, block_n), g),
        in_specs=[
            x_spec,
            pl.BlockSpec((None, kp, dp), lambda i, gi: (gi, 0, 0)),
            pl.BlockSpec((None, kp), lambda i, gi: (gi, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, n), lambda i, gi: (gi, 0)),
            pl.BlockSpec((None, n), lambda i, gi: (gi, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((g, n), jnp.int32),
            jax.ShapeDtypeStruct((g, n), jnp.float32),
        ],
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
        interpret=interpret,
        name="kmeans_assign",
    )(x, c, cc)


def group_shape(x: jax.Array) -> tuple[int, ...]:
    """The group axes of a k-means operand: ``(G,)`` for ``[G, N, D]``, ``(B, H)`` for ``[B, N, H, D]``."""
    return x.shape[:1] if x.ndim == 3 else (x.shape[0], x.shape[2])


def to_groups(x: jax.Array) -> jax.Array:
    """``[G, N, D]`` view of a k-means operand (a transpose, i.e. a copy, for ``[B, N, H, D]``)."""
    if x.ndim == 3:
        return x
    b, n, h, d = x.shape
    return jnp.swapaxes(x, 1, 2).reshape(b * h, n, d)


def _check_inputs(x, centroids) -> None:
    if x.ndim not in (3, 4):
        raise ValueError(
            "x must have rank 3 [G, N, D] or rank 4 [B, N, H, D] (token-major, groups (B, H)); "
            f"got shape {x.shape}"
        )
    want = "[G, K, D]" if x.ndim == 3 else "[B, H, K, D]"
    if centroids.ndim != x.ndim:
        raise ValueError(
            f"centroids must have rank {x.ndim} {want} for x of shape {x.shape}; got {centroids.shape}"
        )
    for name, a in (("x", x), ("centroids", centroids)):
        if a.dtype not in checks.FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16 or float16; got {a.dtype}")
    groups, n, d = group_shape(x), x.shape[1], x.shape[-1]
    if (*centroids.shape[:-2], centroids.shape[-1]) != (*groups, d):
        raise ValueError(
            f"centroids must be {want} with the groups {groups} and dim D={d} of x {x.shape}; "
            f"got {centroids.shape}"
        )
    if n == 0 or centroids.shape[-2] == 0:
        raise ValueError(f"need at least one row and one centroid; got N={n}, K={centroids.shape[-2]}")


def kmeans_assign(
    x: Float[Array, "G N D"] | Float[Array, "B N H D"],
    centroids: Float[Array, "G K D"] | Float[Array, "B H K D"],
    *,
    implementation: str = "auto",
    interpret: bool | None = None,
    config: KMeansAssignConfig | None = None,
) -> tuple[Int[Array, "*groups N"], Float[Array, "*groups N"]]:
    """Nearest centroid (squared L2) of every row of every group: ``(labels int32, min_dist float32)``.

    ``x`` is ``[G, N, D]`` (groups outermost) or token-major ``[B, N, H, D]`` (the attention layout, one
    group per ``(b, h)``: centroids ``[B, H, K, D]``, outputs ``[B, H, N]``); the Triton and Mosaic kernels
    read the token-major layout in place, so q and k need no transpose.

    Centroids are rounded to ``x.dtype`` for the dot (bf16 inputs run at tensor-core speed), which
    accumulates in float32; ties go to the lowest centroid index. ``N``, ``K`` and ``D`` are arbitrary.

    ``implementation``: ``"xla"`` (the oracle :func:`kmeans_assign_reference`, materialising ``[G, N, K]``),
    ``"pallas_triton"`` (the fused kernel; runs on CPU with ``interpret=True``), ``"pallas_mosaic"``
    (Hopper: wgmma + TMA, bf16/f16 rows, D a multiple of 64 up to 256, token-major rows read in place; it
    takes the argmin over distances truncated to 17 significant bits, see ``kmeans_mosaic``) or ``"auto"``
    (Mosaic on Hopper where it applies, else Triton on GPU; XLA on CPU). ``interpret`` defaults to True
    off-GPU; ``config`` tunes the Triton launch.
    """
    _check_inputs(x, centroids)
    groups = group_shape(x)
    n, d, k = x.shape[1], x.shape[-1], centroids.shape[-2]
    cg = centroids.reshape(-1, k, d)  # [G, K, D]
    # 'auto' on Hopper: the Mosaic kernel (23% faster than Triton at K=1000, benchmarks/kmeans_mosaic.py).
    impl = resolve_implementation(implementation, mosaic_ok=kmeans_mosaic_supports(x))
    if impl == "xla":
        labels, dist = kmeans_assign_reference(to_groups(x), cg)
    elif impl == "pallas_mosaic":
        labels, dist = kmeans_assign_mosaic(x, cg)  # reads token-major rows in place
    else:
        interpret = (jax.default_backend() != "gpu") if interpret is None else interpret
        config = config or KMeansAssignConfig()
        block_n = min(config.block_n, max(16, pl.next_power_of_2(n)))
        block_k = min(config.block_k, max(16, pl.next_power_of_2(k)))
        dp = padded_head_dim(d)

        c, cc = rounded_centroids(cg, x.dtype)  # [G, K, D], [G, K]
        kp = pl.cdiv(k, block_k) * block_k
        cc = jnp.pad(cc, ((0, 0), (0, kp - k)), constant_values=jnp.inf)  # [G, Kp]
        c = pad_axis(pad_axis(c, 1, kp), 2, dp)  # [G, Kp, Dp]
        # Copies x only when N < block_n or D is not a power of two >= 16.
        xp = pad_axis(pad_axis(x, 1, max(n, block_n)), x.ndim - 1, dp)  # [G | B, max(N, bn), (H,) Dp]
        labels, dist = _call(xp, c, cc, block_n=block_n, block_k=block_k, config=config, interpret=interpret)
    return labels[:, :n].reshape(*groups, n), dist[:, :n].reshape(*groups, n)
