"""Dotted parameter paths of an NNX model (``blocks.attn1.to_out.0.kernel``) and their storage layout.

The model stacks block parameters (``blocks.X`` is ``[num_layers, ...]``); the checkpoint stores one entry
per layer (``blocks.N.X``, diffusers' own layout), so conversion never holds a stacked leaf in memory. The
orbax tree is a nested dict keyed by the dotted segments.
"""

from collections.abc import Mapping
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


STACKED_PREFIX = "blocks."


def is_stacked(path: str) -> bool:
    """Whether a model parameter carries the leading ``num_layers`` axis."""
    return path.startswith(STACKED_PREFIX)


def storage_path(path: str, layer: int | None) -> str:
    """Checkpoint entry of ``path`` (at ``layer`` for stacked parameters): ``blocks.X`` → ``blocks.N.X``."""
    if layer is None:
        return path
    return f"{STACKED_PREFIX}{layer}.{path.removeprefix(STACKED_PREFIX)}"


def storage_shapes(
    params: Mapping[str, jax.ShapeDtypeStruct], num_layers: int
) -> dict[str, jax.ShapeDtypeStruct]:
    """The checkpoint entries for model parameters ``params``: stacked ones split per layer."""
    out = {}
    for path, spec in params.items():
        if not is_stacked(path):
            out[path] = spec
            continue
        if spec.shape[:1] != (num_layers,):
            raise ValueError(
                f"{path}: stacked parameter must lead with num_layers={num_layers}; got {spec.shape}"
            )
        for layer in range(num_layers):
            out[storage_path(path, layer)] = jax.ShapeDtypeStruct(spec.shape[1:], spec.dtype)
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
