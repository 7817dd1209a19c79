"""The self-attention injection protocol and the default dense attention.

Models never import an attention *method* (SVG1, SVG2, ...). Instead the self-attention of every block
calls an injected function with the signature of :class:`AttnFn`::

    out, new_state, stats = attn_fn(q, k, v, layer=layer, state=state)

* ``q, k, v``: ``[B, N, H, D]`` in the model's compute dtype, taken *after* qk-norm and RoPE (the order
  of diffusers' ``WanAttnProcessor``). Video tokens are frame-major (``f·Hp·Wp + h·Wp + w``).
* ``layer``: int32 scalar, the block index. The blocks run under ``lax.scan``, so it is traced: branch
  on it with ``lax.cond``/``jnp.where``, never with Python ``if``.
* ``state``: this layer's slice of the caller's ``attn_state`` pytree, whose leaves all carry a leading
  ``num_layers`` axis (``None`` when the caller passed none).
* ``out``: ``[B, N, H, D]``; ``new_state``: same structure, shapes and dtypes as ``state`` (restacked
  over layers by the scan); ``stats``: any pytree of small arrays, stacked over layers by the scan.

The function must be traceable (no inner ``jax.jit`` needed, no side effects): the model calls it once
per block inside ``lax.scan``. Cross-attention is not injected: it always uses :func:`sdpa`.
"""

from typing import Any, Literal, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PyTree

Implementation = Literal["cudnn", "xla"]

# cuDNN fused attention (jax.nn.dot_product_attention, implementation="cudnn") takes half precision
# only, with the head dim a multiple of 8 and at most 128 on every GPU generation jax supports.
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_CUDNN_MAX_HEAD_DIM = 128


@runtime_checkable  # beartype/jaxtyping checks only that it is callable
class AttnFn(Protocol):
    """Self-attention of one block; see the module docstring for the contract."""

    def __call__(
        self,
        q: Float[Array, "B N H D"],
        k: Float[Array, "B M H D"],
        v: Float[Array, "B M H D"],
        *,
        layer: Int[Array, ""],
        state: PyTree[Any] | None,
    ) -> tuple[Float[Array, "B N H D"], PyTree[Any] | None, PyTree[Any]]: ...


def choose_implementation(q: Float[Array, "B N H D"]) -> Implementation:
    """Pick cuDNN on a CUDA GPU when it supports dtype and head dim, XLA otherwise.

    jax's own default for ``implementation=None`` is XLA, so the choice is made explicitly here.
    """
    head_dim = q.shape[-1]
    on_gpu = jax.default_backend() in ("gpu", "cuda")
    supported = q.dtype in _CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= _CUDNN_MAX_HEAD_DIM
    return "cudnn" if on_gpu and supported else "xla"


def sdpa(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    *,
    kv_lengths: Int[Array, " B"] | None = None,
) -> Float[Array, "B N H D"]:
    """Softmax attention with scale ``1/sqrt(D)`` (torch SDPA's default).

    With ``kv_lengths``, sample ``b`` attends only to keys ``[0, kv_lengths[b])`` (a right-padded key
    mask; every query row keeps at least one key when ``kv_lengths >= 1``). ``None`` is unmasked.
    """
    if q.shape[-1] != k.shape[-1] or k.shape != v.shape:
        raise ValueError(f"attention shapes disagree: {q.shape=}, {k.shape=}, {v.shape=}")
    return jax.nn.dot_product_attention(
        q, k, v, key_value_seq_lengths=kv_lengths, implementation=choose_implementation(q)
    )


def masked_dense_attention(kv_lengths: Int[Array, " B"] | None) -> AttnFn:
    """A dense :class:`AttnFn` whose keys at positions ``>= kv_lengths[b]`` are masked out (None: no
    mask); it passes ``state`` through and reports no stats.

    HunyuanVideo's default: the joint sequence is ``[video, text]`` with the text right-padded, so
    ``kv_lengths = N_video + valid_text_tokens`` (queries are not masked, as in diffusers).
    """

    def attn_fn(
        q: Float[Array, "B N H D"],
        k: Float[Array, "B M H D"],
        v: Float[Array, "B M H D"],
        *,
        layer: Int[Array, ""],
        state: PyTree[Any] | None,
    ) -> tuple[Float[Array, "B N H D"], PyTree[Any] | None, dict]:
        del layer  # dense attention (and its mask) is the same in every layer
        return sdpa(q, k, v, kv_lengths=kv_lengths), state, {}

    return attn_fn


# Default :class:`AttnFn`: unmasked dense attention, the same in every layer.
dense_attention: AttnFn = masked_dense_attention(None)
