"""Plan a conversion from headers alone, and fail with every problem at once.

The plan is a total mapping: every source key is used (or explicitly ignored, as diffusers does), every
target parameter of the abstract model is filled exactly once per layer, and every shape matches. Nothing
is read or written before the plan is complete and clean.
"""

import dataclasses
import logging
from collections.abc import Mapping
from typing import Literal

import numpy as np

from .errors import ConversionError
from .families import ModelFamily
from .params import stack_of
from .rules import Mapped, Transform

log = logging.getLogger(__name__)

Format = Literal["diffusers", "original"]


@dataclasses.dataclass(frozen=True)
class Source:
    """One source tensor feeding a target leaf (at ``layer`` for stacked block leaves)."""

    key: str  # key in the source checkpoint (ComfyUI prefix stripped)
    layer: int | None
    transform: Transform


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """One NNX parameter: its full shape/dtype and its sources (one, or one per layer, in layer order)."""

    target: str
    shape: tuple[int, ...]
    dtype: np.dtype
    sources: tuple[Source, ...]


def detect_format(keys: list[str], family: ModelFamily) -> Format:
    """``diffusers`` if any key is a diffusers top-level name of ``family``, ``original`` if any is an
    original one (an error for a family without original-format rules)."""
    if any(k.startswith(family.diffusers_markers) for k in keys):
        return "diffusers"
    if any(k.startswith(family.original_markers) for k in keys):
        family.check_original_supported()
        return "original"
    formats = "--format diffusers" + (" or --format original" if family.original_rules is not None else "")
    raise ConversionError(
        [
            f"cannot tell the checkpoint format from its keys (no '{family.diffusers_markers[0]}*' nor "
            f"'{family.original_markers[0]}*'); "
            f"pass {formats}"
        ]
    )


def shape_problem(
    label: str, source_shape: tuple[int, ...], mapped: Mapped, target_shape: tuple[int, ...]
) -> str | None:
    """Why the tensor ``label`` cannot fill ``mapped.target`` of ``target_shape`` (one layer of it when
    ``mapped.layer`` is set) after its transform, or None when it fits."""
    expected = tuple(target_shape[1:] if mapped.layer is not None else target_shape)
    try:
        got = mapped.transform.shape(source_shape)
    except ValueError as e:
        return f"shape mismatch: {label}: {e}"
    if got != expected:
        return (
            f"shape mismatch: {label} has shape {source_shape} → {got} after {mapped.transform.name}; "
            f"{mapped.target} expects {expected}"
        )
    return None


def plan_conversion(
    shapes: Mapping[str, tuple[int, ...]],
    targets: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    *,
    family: ModelFamily,
    fmt: Format,
) -> list[LeafPlan]:
    """Map source ``shapes`` (by key) onto ``targets`` (NNX path → (shape, dtype)) with ``family``'s
    rules; strict and total. Each stack's depth is the leading axis of its targets."""
    if fmt == "original":
        family.check_original_supported()
    problems: list[str] = []
    slots: dict[tuple[str, int | None], str] = {}
    sources: dict[str, list[Source]] = {t: [] for t in targets}
    for key in sorted(shapes):
        name = key
        if fmt == "original":
            name = family.original_to_diffusers(key)
            if name is None:
                problems.append(
                    f"unexpected: {key} (no original→diffusers rule; expected one of the "
                    f"{len(family.original_rules)} original-format patterns)"
                )
                continue
        if family.is_ignored(name):
            log.info("ignoring %s (diffusers drops it on load too)", key)
            continue
        mapped = family.map_key(name)
        label = key if name == key else f"{key} (= {name})"
        if mapped is None:
            problems.append(f"unexpected: {label} (no rule maps it to a model parameter)")
            continue
        if mapped.target not in targets:
            problems.append(f"unexpected: {label} → {mapped.target}, which this config's model does not have")
            continue
        stack = stack_of(mapped.target, family.stacks)
        assert (mapped.layer is not None) == (stack is not None), (key, mapped)
        if stack is not None and mapped.layer >= (depth := targets[mapped.target][0][0]):
            problems.append(f"unexpected: {label}: layer {mapped.layer} >= {stack.depth}={depth}")
            continue
        slot = (mapped.target, mapped.layer)
        if slot in slots:
            problems.append(
                f"duplicate: {label} and {slots[slot]} both fill {mapped.target} layer {mapped.layer}"
            )
            continue
        slots[slot] = key
        problem = shape_problem(label, tuple(shapes[key]), mapped, targets[mapped.target][0])
        if problem is not None:
            problems.append(problem)
            continue
        sources[mapped.target].append(Source(key, mapped.layer, mapped.transform))

    plans = []
    for target, (shape, dtype) in sorted(targets.items()):
        layers = range(shape[0]) if stack_of(target, family.stacks) else [None]
        claimed = {layer for (t, layer) in slots if t == target}  # a mis-shaped key is not also "missing"
        missing = [layer for layer in layers if layer not in claimed]
        problems += [
            f"missing: {family.expected_key(target, layer)} (fills {target}"
            + (f" layer {layer})" if layer is not None else ")")
            for layer in missing
        ]
        if not missing and len(sources[target]) == len(layers):
            ordered = tuple(sorted(sources[target], key=lambda s: -1 if s.layer is None else s.layer))
            plans.append(LeafPlan(target, tuple(shape), np.dtype(dtype), ordered))
    if problems:
        raise ConversionError(problems)
    return plans
