"""Dotted parameter paths of an NNX model (``blocks.attn1.to_out.0.kernel``) and their storage layout.

A model stacks the parameters of each block group (a :class:`Stack`: Wan's ``blocks``, HunyuanVideo's
``transformer_blocks`` ...; ``blocks.X`` is ``[num_layers, ...]``); the checkpoint stores one entry per
layer (``blocks.N.X``, diffusers' own layout), so conversion never holds a stacked leaf in memory. The
orbax tree is a nested dict keyed by the dotted segments.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx


def dotted(path: tuple[Any, ...]) -> str:
    """``('blocks', 'to_out', 0, 'kernel')`` → ``'blocks.to_out.0.kernel'``."""
    return ".".join(str(p) for p in path)


def param_shapes(model: nnx.Module) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of every parameter of ``model`` (abstract or concrete), by dotted path."""
    state = nnx.state(model)
    out = {}
    for path, var in nnx.to_flat_state(state):
        if not isinstance(var, nnx.Param):
            raise TypeError(
                f"model state holds a non-parameter variable at {dotted(path)}: {type(var).__name__}"
            )
        out[dotted(path)] = jax.ShapeDtypeStruct(var.shape, var.dtype)
    return out


@dataclasses.dataclass(frozen=True)
class Stack:
    """A group of stacked block parameters: every leaf under ``prefix`` leads with a layer axis."""

    prefix: str  # dotted model path of the group, e.g. "blocks" or "single_transformer_blocks"
    depth: str  # the config field that sets its number of layers (for messages), e.g. "num_layers"


def stack_of(path: str, stacks: Sequence[Stack]) -> Stack | None:
    """The stack a model parameter belongs to, or None for a top-level parameter."""
    return next((s for s in stacks if path.startswith(s.prefix + ".")), None)


def storage_path(path: str, layer: int | None, stacks: Sequence[Stack]) -> str:
    """Checkpoint entry of ``path`` (at ``layer`` for stacked parameters): ``blocks.X`` → ``blocks.N.X``."""
    if layer is None:
        return path
    stack = stack_of(path, stacks)
    if stack is None:
        raise ValueError(
            f"{path} is not in any stack {[s.prefix for s in stacks]}, so it has no layer {layer}"
        )
    return f"{stack.prefix}.{layer}.{path.removeprefix(stack.prefix + '.')}"


def storage_shapes(
    params: Mapping[str, jax.ShapeDtypeStruct], stacks: Sequence[Stack]
) -> dict[str, jax.ShapeDtypeStruct]:
    """The checkpoint entries for model parameters ``params``: stacked ones split along their leading
    (layer) axis."""
    out = {}
    for path, spec in params.items():
        if stack_of(path, stacks) is None:
            out[path] = spec
            continue
        if len(spec.shape) < 1:
            raise ValueError(
                f"{path}: a stacked parameter must lead with a layer axis; got shape {spec.shape}"
            )
        for layer in range(spec.shape[0]):
            out[storage_path(path, layer, stacks)] = jax.ShapeDtypeStruct(spec.shape[1:], spec.dtype)
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{'a.b.c': x}`` → ``{'a': {'b': {'c': x}}}``."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of :func:`nest`."""
    out: dict[str, Any] = {}
    for k, v in nested.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, path + "."))
        else:
            out[path] = v
    return out


def with_params(model: nnx.Module, arrays: Mapping[str, jax.Array]) -> nnx.Module:
    """A copy of ``model`` (may be abstract) whose parameters are ``arrays``; keys must match exactly."""
    graphdef, state = nnx.split(model)
    flat = nnx.to_flat_state(state)
    expected = {dotted(path) for path, _ in flat}
    if expected != set(arrays):
        raise ValueError(
            f"parameter sets differ: missing {sorted(expected - set(arrays))}, "
            f"unexpected {sorted(set(arrays) - expected)}"
        )
    leaves = []
    for path, var in flat:
        value = arrays[dotted(path)]
        if (value.shape, value.dtype) != (var.shape, var.dtype):
            raise ValueError(
                f"{dotted(path)}: expected {var.shape} {var.dtype}; got {value.shape} {value.dtype}"
            )
        leaves.append((path, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))
