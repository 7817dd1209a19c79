"""Plain-XLA oracle of the k-means assignment kernel (:func:`kmeans_assign`).

It materialises the ``[G, N, K]`` distance matrix, so it is meant for test-sized problems and for CPU.
It computes exactly what the kernel computes: centroids are first rounded to ``x.dtype`` (the kernel
multiplies in the input precision), then ``‖x‖² + ‖c‖² − 2·x·c`` is evaluated in float32 with
``precision=HIGHEST``, and the argmin picks the lowest index among ties.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def rounded_centroids(centroids: Float[Array, "*G K D"], dtype) -> tuple[Array, Float[Array, "*G K"]]:
    """``(c, ‖c‖²)``: the centroids rounded to ``dtype`` (the dot's operand) and the float32 squared norms
    of exactly those rounded values, as every implementation uses them.

    The rounding is a ``reduce_precision`` to ``dtype``'s bits: XLA may drop a ``float32 → bf16 → float32``
    convert pair when it allows excess precision, and then ``‖c‖²`` came from the unrounded centroids in
    some compilations but not others (up to 0.4% of labels changed on the GPU with float32 centroids).
    Values below ``dtype``'s smallest normal may flush to zero, in ``c`` and ``‖c‖²`` alike."""
    cf = centroids.astype(jnp.float32)
    if jnp.dtype(dtype) != jnp.float32:
        info = jnp.finfo(dtype)
        cf = jax.lax.reduce_precision(cf, exponent_bits=info.nexp, mantissa_bits=info.nmant)
    return cf.astype(dtype), jnp.sum(cf * cf, axis=-1)


def squared_distances(x: Float[Array, "G N D"], centroids: Float[Array, "G K D"]) -> Float[Array, "G N K"]:
    """Squared L2 distances ``‖x‖² + ‖c‖² − 2·x·c`` in float32 (centroids rounded to ``x.dtype``)."""
    c, cc = rounded_centroids(centroids, x.dtype)  # [G, K, D], [G, K]
    xf, cf = x.astype(jnp.float32), c.astype(jnp.float32)
    xx = jnp.sum(xf * xf, axis=-1)  # [G, N]
    xc = jnp.einsum("gnd,gkd->gnk", xf, cf, precision=jax.lax.Precision.HIGHEST)  # [G, N, K]
    return xx[:, :, None] + cc[:, None, :] - 2.0 * xc


def kmeans_assign_reference(
    x: Float[Array, "G N D"],
    centroids: Float[Array, "G K D"],
) -> tuple[Int[Array, "G N"], Float[Array, "G N"]]:
    """Nearest centroid of every row and its squared distance: ``(labels int32, min_dist float32)``."""
    d = squared_distances(x, centroids)  # [G, N, K]
    labels = jnp.argmin(d, axis=-1).astype(jnp.int32)  # first index among ties
    return labels, jnp.min(d, axis=-1)
