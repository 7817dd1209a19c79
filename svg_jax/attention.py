"""Attention dispatch: one self-attention function that runs dense, SVG1 or SVG2 per layer and step.

The models call an injected function ``attn_fn(q, k, v, *, layer, state) -> (out, new_state, stats)`` once
per block inside ``lax.scan`` (``models/attention.py``). :func:`make_attn_fn` builds that function from an
:class:`AttentionConfig`, the static :class:`~svg_jax.layout.VideoLayout` and the denoising step:

* layers ``layer < dense_layers`` run dense attention. ``layer`` is traced inside the scan, so the choice is
  a ``lax.cond`` whose two branches return the same output, state and stats structure;
* steps ``step < dense_steps`` (the dense warm-up) run dense in every layer. Style rule 11 puts the
  warm-up in its own compiled loop, so the caller says which loop it is building with a static
  ``phase="dense"`` / ``"sparse"``; the step itself may then be a traced int32 and only feeds the PRNG
  key, so every step of a phase reuses one executable. With ``phase=None`` a Python-int step picks the
  phase statically, and a traced step is tested by the same ``lax.cond`` as the layer (both branches are
  compiled into the one executable; only the taken one runs).

:class:`AttentionState` is carried functionally: the SVG2 centroid cache (leaves ``[L, ...]``) and a base
PRNG key replicated over layers. Every call derives its key as ``fold_in(fold_in(base, step), layer)``, so
each (step, layer) draws its own SVG1 profiling rows and SVG2 cold-start centroids, the state never
changes shape, and a rerun with the same base key and step reproduces the same result.

**Classifier-free guidance.** The official SVG2 keeps one centroid cache per layer that both the
conditional and the unconditional pass use: the uncond pass warm-starts from the centroids the cond pass
just wrote, and the next step's cond pass from the uncond ones. Reproduce that by chaining the state::

    cond, state, _ = model(x, t, ctx, attn_fn=fn, attn_state=state, return_attention=True)
    uncond, state, _ = model(x, t, ctx_neg, attn_fn=fn, attn_state=state, return_attention=True)

Passing the *same input* ``state`` to both passes and keeping only the cond pass's returned state instead
gives a cache that follows the conditional pass alone. Batching cond and uncond along ``B`` gives each
its own centroids (the cache has a batch axis), which differs from the official sharing.
"""

import dataclasses
import logging
from typing import Any, Literal, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, Key, PRNGKeyArray

from .layout import TextTokens, VideoLayout
from .svg1 import SVG1Config, svg1_attention
from .svg2 import SVG2Cache, SVG2Config, svg2_attention

log = logging.getLogger(__name__)

Method = Literal["dense", "svg1", "svg2"]
Phase = Literal["dense", "sparse"]

_METHODS = ("dense", "svg1", "svg2")
_PHASES = ("dense", "sparse")
# cuDNN fused attention takes half precision only, head dim a multiple of 8 and at most 128.
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_CUDNN_MAX_HEAD_DIM = 128


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttentionConfig:
    """Which self-attention method runs (hashable: a static jit argument).

    Only the chosen method's config is read; the dense schedule (``dense_steps``, ``dense_layers``) comes
    from it, so one config object describes a method completely.
    """

    method: Method
    svg1: SVG1Config | None = None
    svg2: SVG2Config | None = None

    def __post_init__(self):
        if self.method not in _METHODS:
            raise ValueError(f"AttentionConfig.method must be one of {_METHODS}; got {self.method!r}")
        for name, cls in (("svg1", SVG1Config), ("svg2", SVG2Config)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise ValueError(
                    f"AttentionConfig.{name} must be an {cls.__name__} or None; got {type(value).__name__}"
                )
            if self.method == name and value is None:
                raise ValueError(
                    f"AttentionConfig.{name} is required when method={name!r}; got None "
                    f"(pass {name}={cls.__name__}(...))"
                )

    @property
    def method_config(self) -> SVG1Config | SVG2Config | None:
        """The config of the chosen method (None for dense)."""
        return None if self.method == "dense" else getattr(self, self.method)

    @property
    def dense_steps(self) -> int:
        """Leading denoising steps that run dense (0 for the dense method: it is dense throughout)."""
        cfg = self.method_config
        return 0 if cfg is None else cfg.dense_steps

    @property
    def dense_layers(self) -> int:
        """Leading layers that always run dense."""
        cfg = self.method_config
        return 0 if cfg is None else cfg.dense_layers

    def phase(self, step: int) -> Phase:
        """The phase of a (host-side) step index: ``'dense'`` during the warm-up, else ``'sparse'``."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int; got {step!r}")
        return "dense" if self.method == "dense" or step < self.dense_steps else "sparse"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionState:
    """Attention state carried through the model and across steps; every leaf leads with ``L`` layers.

    ``key``: the base PRNG key, the same in every layer (the model's scan needs a layer axis on every
    leaf); calls derive per-(step, layer) keys from it and never change it. ``svg2``: the SVG2 centroid
    cache, None for the other methods.
    """

    key: Key[Array, "*L"]  # typed key, replicated over layers
    svg2: SVG2Cache | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionStats:
    """Per-layer diagnostics; the model's scan stacks them, so every field gains a leading ``L`` axis.

    Dense layers report ``dense=True``, ``density=1``, ``head_choice=-1``, ``estimated_recall=1``, 0
    k-means iterations and ``query_tiling=-1``. Method-specific fields are None for other methods (the
    same in both branches).
    """

    dense: Bool[Array, "*L"]  # this layer ran dense attention
    density: Float[Array, "*L B H"]  # fraction of the N × N score matrix computed
    head_choice: Int[Array, "*L B H"] | None = None  # SVG1: 0 spatial, 1 temporal, -1 dense
    estimated_recall: Float[Array, "*L B H"] | None = None  # SVG2: centroid-estimated mass kept
    q_kmeans_iters: Int[Array, "*L"] | None = None  # SVG2: Lloyd iterations on Q (0 when dense)
    k_kmeans_iters: Int[Array, "*L"] | None = None  # SVG2: Lloyd iterations on K
    # SVG2: the query tiling the layer ran, an index into svg2.QUERY_TILINGS (-1 when dense)
    query_tiling: Int[Array, "*L"] | None = None


@runtime_checkable  # beartype/jaxtyping check only that it is callable
class AttnFn(Protocol):
    """The models' self-attention protocol (``models/attention.py``), as :func:`make_attn_fn` returns it."""

    def __call__(
        self,
        q: Float[Array, "B N H D"],
        k: Float[Array, "B N H D"],
        v: Float[Array, "B N H D"],
        *,
        layer: Int[Array, ""],
        state: AttentionState | None,
    ) -> tuple[Float[Array, "B N H D"], AttentionState | None, AttentionStats]: ...


def dense_attention(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    text: TextTokens | None = None,
) -> Float[Array, "B N H D"]:
    """Softmax attention, scale ``1/sqrt(D)``: cuDNN on a GPU when it supports the inputs, XLA otherwise.

    The same computation as the models' dense path (``models/attention.sdpa``), which this layer may not
    import; jax's default implementation is XLA everywhere, so the choice is explicit. With ``text``
    carrying ``valid_len``, padded text *keys* are masked for every query (diffusers' HunyuanVideo mask;
    queries are not masked): with the text last the valid keys are a prefix, which cuDNN takes as
    ``key_value_seq_lengths``; with the text first an explicit key mask runs through XLA.
    """
    d = q.shape[-1]
    on_gpu = jax.default_backend() in ("gpu", "cuda")
    cudnn = on_gpu and q.dtype in _CUDNN_DTYPES and d % 8 == 0 and d <= _CUDNN_MAX_HEAD_DIM
    impl = "cudnn" if cudnn else "xla"
    if text is None or text.valid_len is None:
        return jax.nn.dot_product_attention(q, k, v, implementation=impl)
    b, m = k.shape[0], k.shape[1]
    valid = jnp.clip(jnp.broadcast_to(jnp.asarray(text.valid_len, jnp.int32), (b,)), 0, text.num_tokens)
    if text.placement == "last":
        kv_len = m - text.num_tokens + valid  # [B] video keys, then the real prompt keys
        return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_len, implementation=impl)
    key_ok = jnp.concatenate(
        [text.valid_mask(b), jnp.ones((b, m - text.num_tokens), jnp.bool_)], axis=1
    )  # [B, M]: prompt, padding, then video
    return jax.nn.dot_product_attention(q, k, v, mask=key_ok[:, None, None, :], implementation="xla")


def init_attention_state(
    config: AttentionConfig, *, num_layers: int, batch: int, heads: int, head_dim: int, key: PRNGKeyArray
) -> AttentionState:
    """A fresh state: base ``key`` replicated over ``num_layers`` and, for SVG2, a cold centroid cache.

    The SVG2 cache has a batch axis: with classifier-free guidance pass cond and uncond one after the
    other with the same ``batch`` (see the module docstring).
    """
    if not isinstance(config, AttentionConfig):
        raise ValueError(f"config must be an AttentionConfig; got {type(config).__name__}")
    for name, value in (
        ("num_layers", num_layers),
        ("batch", batch),
        ("heads", heads),
        ("head_dim", head_dim),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"init_attention_state: {name} must be a positive int; got {value!r}")
    key = jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a legacy uint32[2] key
    if key.shape != ():
        raise ValueError(f"init_attention_state: key must be a single PRNG key; got shape {key.shape}")
    cache = None
    if config.method == "svg2":
        cache = SVG2Cache.create(num_layers, batch, heads, config.svg2, head_dim)
    return AttentionState(key=jnp.broadcast_to(key, (num_layers,)), svg2=cache)


def _dense_stats(config: AttentionConfig, b: int, h: int) -> AttentionStats:
    ones = jnp.ones((b, h), jnp.float32)
    stats = AttentionStats(dense=jnp.ones((), jnp.bool_), density=ones)
    if config.method == "svg1":
        stats = dataclasses.replace(stats, head_choice=jnp.full((b, h), -1, jnp.int32))
    elif config.method == "svg2":
        zero = jnp.zeros((), jnp.int32)
        stats = dataclasses.replace(
            stats,
            estimated_recall=ones,
            q_kmeans_iters=zero,
            k_kmeans_iters=zero,
            query_tiling=jnp.full((), -1, jnp.int32),
        )
    return stats


def _check_state(config: AttentionConfig, state: Any) -> None:
    if config.method == "dense" and state is None:
        return
    if not isinstance(state, AttentionState):
        raise ValueError(
            f"attn_state must be the AttentionState of init_attention_state(config, ...) for method="
            f"{config.method!r}; got {type(state).__name__}"
        )
    if config.method == "svg2" and state.svg2 is None:
        raise ValueError(
            "attn_state.svg2 is None but method='svg2' needs the centroid cache; build the state with "
            "init_attention_state(config, ...) from the same svg2 config"
        )


def make_attn_fn(
    config: AttentionConfig,
    *,
    layout: VideoLayout | None = None,
    step: int | Int[Array, ""],
    phase: Phase | None = None,
    text: TextTokens | None = None,
) -> AttnFn:
    """Build the self-attention function of one model call at denoising ``step``.

    ``phase`` (static) names the sampler loop this call belongs to: ``'dense'`` runs every layer dense,
    ``'sparse'`` runs the method except in the first ``dense_layers`` layers. Pass a traced int32
    ``step`` with a static ``phase`` so that all steps of a phase share one executable. ``phase=None``
    derives the phase from a Python-int ``step``, or compares a traced ``step`` with ``dense_steps``
    inside the jitted code. ``layout`` (required by SVG1 and SVG2) fixes where video and text tokens sit;
    ``text`` carries per-batch valid prompt lengths (default: every text token of the layout is valid).
    """
    if not isinstance(config, AttentionConfig):
        raise ValueError(f"config must be an AttentionConfig; got {type(config).__name__}")
    if phase is not None and phase not in _PHASES:
        raise ValueError(f"phase must be 'dense', 'sparse' or None; got {phase!r}")
    static_step = isinstance(step, int) and not isinstance(step, bool)
    if static_step:
        expected = config.phase(step)
        if phase is not None and config.method != "dense" and phase != expected:
            raise ValueError(
                f"phase={phase!r} disagrees with step={step}: dense_steps={config.dense_steps} makes it "
                f"the {expected!r} phase"
            )
        phase = expected
    elif jnp.shape(step) != () or not jnp.issubdtype(jnp.result_type(step), jnp.integer):
        raise ValueError(f"step must be an int or an integer scalar array; got {step!r}")
    if config.method == "dense":
        phase = "dense"

    if config.method != "dense":
        if layout is None:
            raise ValueError(f"layout is required for method={config.method!r}; got None")
        if text is None and layout.text_placement != "none":
            text = layout.text_tokens()  # every text slot is a prompt token
        if config.method == "svg2":
            config.svg2.check_num_tokens(layout.num_video_tokens)

    def sparse(q, k, v, layer, state: AttentionState):
        key = jax.random.fold_in(jax.random.fold_in(state.key, step), layer)
        if config.method == "svg1":
            out, s1 = svg1_attention(q, k, v, config=config.svg1, layout=layout, key=key, text=text)
            b, _, h, _ = q.shape
            stats = AttentionStats(
                dense=jnp.zeros((), jnp.bool_),
                density=jnp.broadcast_to(s1.density[:, None], (b, h)).astype(jnp.float32),
                head_choice=s1.head_choice.astype(jnp.int32),
            )
            return out.astype(q.dtype), state, stats
        layout.check_seq_len(q.shape[1], "q.shape[1]")
        out, cache, s2 = svg2_attention(q, k, v, config=config.svg2, cache=state.svg2, key=key, text=text)
        stats = AttentionStats(
            dense=jnp.zeros((), jnp.bool_),
            density=s2.density.astype(jnp.float32),
            estimated_recall=s2.estimated_recall.astype(jnp.float32),
            q_kmeans_iters=s2.q_kmeans_iters.astype(jnp.int32),
            k_kmeans_iters=s2.k_kmeans_iters.astype(jnp.int32),
            query_tiling=s2.query_tiling.astype(jnp.int32),
        )
        return out.astype(q.dtype), dataclasses.replace(state, svg2=cache), stats

    def dense(q, k, v, layer, state):
        del layer
        b, _, h, _ = q.shape
        return dense_attention(q, k, v, text).astype(q.dtype), state, _dense_stats(config, b, h)

    def attn_fn(q, k, v, *, layer, state):
        _check_state(config, state)
        if phase == "dense":
            return dense(q, k, v, layer, state)
        run_dense = None
        if config.dense_layers:
            run_dense = layer < config.dense_layers
        if phase is None and config.dense_steps:  # traced step: the warm-up test runs on device
            warm_up = step < config.dense_steps
            run_dense = warm_up if run_dense is None else run_dense | warm_up
        if run_dense is None:
            return sparse(q, k, v, layer, state)
        return jax.lax.cond(run_dense, dense, sparse, q, k, v, layer, state)

    log.debug("attention %s, phase %s, dense layers %d", config.method, phase, config.dense_layers)
    return attn_fn
