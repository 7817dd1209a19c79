"""HunyuanVideo diffusers keys → NNX parameter paths, and an in-memory loader built on them.

The rules reuse :class:`~.rules.Rule` and the named :data:`~.rules.TRANSFORMS`. The model has three
stacked block groups, each with its own depth: ``transformer_blocks`` (``num_layers``),
``single_transformer_blocks`` (``num_single_layers``) and ``context_embedder.token_refiner.refiner_blocks``
(``num_refiner_layers``); a ``layer`` group in a rule marks a parameter of one of them.

The streaming converter (:func:`~.api.convert_checkpoint`) still assumes Wan's single ``blocks`` stack;
:func:`params_from_diffusers` is the strict, total mapping for a state dict in memory, and
:func:`load_diffusers_hunyuan` builds a ready model from a diffusers ``save_pretrained`` folder with it.
"""

import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from svg_jax.models import HunyuanVideoConfig, HunyuanVideoTransformer3DModel

from .params import param_shapes, with_params
from .plan import shape_problem
from .rules import TRANSFORMS, Mapped, Rule

# Prefixes of the stacked block groups (a leaf under one carries a leading layer axis).
STACKS: tuple[str, ...] = (
    "transformer_blocks",
    "single_transformer_blocks",
    "context_embedder.token_refiner.refiner_blocks",
)

_DOUBLE_LINEARS = (
    r"norm1\.linear|norm1_context\.linear|attn\.(?:to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj"
    r"|to_out\.0|to_add_out)|ff\.net\.0\.proj|ff\.net\.2|ff_context\.net\.0\.proj|ff_context\.net\.2"
)
_DOUBLE_NORMS = r"attn\.(?:norm_q|norm_k|norm_added_q|norm_added_k)"
_SINGLE_LINEARS = r"norm\.linear|attn\.(?:to_q|to_k|to_v)|proj_mlp|proj_out"
_REFINER_LINEARS = r"attn\.(?:to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2|norm_out\.linear"
_EMBEDDERS = r"timestep_embedder|guidance_embedder|text_embedder"
_TOP_LINEARS = (
    rf"time_text_embed\.(?:{_EMBEDDERS})\.linear_[12]|context_embedder\.proj_in"
    r"|context_embedder\.time_text_embed\.(?:timestep_embedder|text_embedder)\.linear_[12]"
    r"|norm_out\.linear|proj_out"
)
_REFINER = r"context_embedder\.token_refiner\.refiner_blocks"


def _stack_rules(prefix: str, linears: str, norms: str | None, layer_norms: str | None) -> tuple[Rule, ...]:
    p = re.escape(prefix) if "\\" not in prefix else prefix
    target = prefix.replace("\\", "")
    rules = [
        Rule(rf"{p}\.(?P<layer>\d+)\.(?P<m>{linears})\.weight", target + ".{m}.kernel", "linear_w"),
        Rule(rf"{p}\.(?P<layer>\d+)\.(?P<m>{linears})\.bias", target + ".{m}.bias"),
    ]
    if norms is not None:  # RMSNorm gain
        rules.append(Rule(rf"{p}\.(?P<layer>\d+)\.(?P<m>{norms})\.weight", target + ".{m}.scale"))
    if layer_norms is not None:  # affine LayerNorm
        rules.append(Rule(rf"{p}\.(?P<layer>\d+)\.(?P<m>{layer_norms})\.weight", target + ".{m}.scale"))
        rules.append(Rule(rf"{p}\.(?P<layer>\d+)\.(?P<m>{layer_norms})\.bias", target + ".{m}.bias"))
    return tuple(rules)


# diffusers key → NNX path (the layer index is dropped from block paths: leaves are stacked).
HUNYUAN_DIFFUSERS_RULES: tuple[Rule, ...] = (
    *_stack_rules("transformer_blocks", _DOUBLE_LINEARS, _DOUBLE_NORMS, None),
    *_stack_rules("single_transformer_blocks", _SINGLE_LINEARS, r"attn\.(?:norm_q|norm_k)", None),
    *_stack_rules(_REFINER, _REFINER_LINEARS, None, r"norm[12]"),
    Rule(r"x_embedder\.proj\.weight", "x_embedder.proj.kernel", "conv3d_w"),
    Rule(r"x_embedder\.proj\.bias", "x_embedder.proj.bias"),
    Rule(rf"(?P<m>{_TOP_LINEARS})\.weight", "{m}.kernel", "linear_w"),
    Rule(rf"(?P<m>{_TOP_LINEARS})\.bias", "{m}.bias"),
)


def map_hunyuan_key(key: str) -> Mapped | None:
    """Where a HunyuanVideo diffusers key goes in the NNX model, or None when no rule knows it."""
    hits = [(rule, out) for rule in HUNYUAN_DIFFUSERS_RULES if (out := rule.apply(key)) is not None]
    assert len(hits) <= 1, f"key {key!r} matches {len(hits)} rules: {[r.pattern for r, _ in hits]}"
    if not hits:
        return None
    rule, target = hits[0]
    layer = re.fullmatch(rule.pattern, key).groupdict().get("layer")
    return Mapped(target, None if layer is None else int(layer), TRANSFORMS[rule.transform])


def stack_of(path: str) -> str | None:
    """The stacked group a model parameter belongs to, or None for a top-level parameter."""
    return next((s for s in STACKS if path.startswith(s + ".")), None)


def params_from_diffusers(
    state: Mapping[str, np.ndarray],
    targets: Mapping[str, tuple[tuple[int, ...], np.dtype]],
) -> dict[str, np.ndarray]:
    """Map a diffusers state dict onto ``targets`` (NNX path → (shape, dtype)); strict and total.

    Raises ValueError listing every unexpected key, missing layer and shape mismatch at once. Stack
    depths come from the targets' leading axes.
    """
    problems: list[str] = []
    slots: dict[str, dict[int | None, np.ndarray]] = {t: {} for t in targets}
    for key in sorted(state):
        mapped = map_hunyuan_key(key)
        if mapped is None or mapped.target not in targets:
            problems.append(f"unexpected: {key} (no rule maps it to a parameter of this config's model)")
            continue
        assert (mapped.layer is not None) == (stack_of(mapped.target) is not None), (key, mapped)
        shape, dtype = targets[mapped.target]
        if mapped.layer is not None and mapped.layer >= shape[0]:
            problems.append(f"unexpected: {key}: layer {mapped.layer} >= stack depth {shape[0]}")
            continue
        array = np.asarray(state[key])
        problem = shape_problem(key, tuple(array.shape), mapped, shape)
        if problem is not None:
            problems.append(problem)
            continue
        slots[mapped.target][mapped.layer] = mapped.transform.apply(array).astype(dtype)

    out = {}
    for target, (shape, _) in sorted(targets.items()):
        layers = list(range(shape[0])) if stack_of(target) else [None]
        missing = [layer for layer in layers if layer not in slots[target]]
        problems += [f"missing: {target}" + ("" if layer is None else f" layer {layer}") for layer in missing]
        if not missing:
            parts = [slots[target][layer] for layer in layers]
            out[target] = np.stack(parts) if stack_of(target) else parts[0]
    if problems:
        raise ValueError("cannot map the HunyuanVideo state dict:\n  " + "\n  ".join(problems))
    return out


def load_diffusers_hunyuan(
    folder: str | pathlib.Path, *, dtype: Any = jnp.bfloat16, param_dtype: Any = jnp.float32
) -> tuple[HunyuanVideoTransformer3DModel, HunyuanVideoConfig]:
    """``(model, config)`` from a diffusers folder (``config.json`` + ``*.safetensors``), all in memory.

    For small checkpoints (tests, tiny configs); the released 13B model needs the streaming converter.
    """
    folder = pathlib.Path(folder)
    config = HunyuanVideoConfig.from_diffusers_config(json.loads((folder / "config.json").read_text()))
    state: dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    abstract = nnx.eval_shape(
        lambda: HunyuanVideoTransformer3DModel(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    )
    targets = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in param_shapes(abstract).items()}
    arrays = params_from_diffusers(state, targets)
    return with_params(abstract, {k: jnp.asarray(v) for k, v in arrays.items()}), config
