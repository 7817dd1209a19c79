"""Deterministic random Wan / HunyuanVideo checkpoints in diffusers format (config.json + safetensors).

For the demo (a tiny model that runs on a CPU) and for tests that need a checkpoint larger than the
committed fixtures. Keys, shapes and tensor layouts are exactly what ``save_pretrained`` writes, so the
output goes through ``svg-jax convert`` like a downloaded checkpoint.
"""

import json
import pathlib
from typing import Literal

import numpy as np
from safetensors.numpy import save_file

from .api import target_shapes
from .atomic import StagingDir
from .families import ModelConfig, ModelFamily, family_for_config
from .params import stack_of

Init = Literal["unit", "fan_in"]


def _source_shape(family: ModelFamily, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """torch layout of the diffusers tensor ``key`` whose target has ``shape`` (inverse transform)."""
    perm = family.map_key(key).transform.perm
    if perm is None:
        return shape
    out = [0] * len(shape)
    for target_axis, source_axis in enumerate(perm):
        out[source_axis] = shape[target_axis]
    return tuple(out)


def _init(
    rng: np.random.Generator, key: str, shape: tuple[int, ...], init: Init, qk_scale: float
) -> np.ndarray:
    x = rng.standard_normal(shape, dtype=np.float32)
    if init == "unit":
        return x
    if len(shape) >= 2:  # torch weight [out, in, ...]: fan-in scaling keeps activations O(1)
        fan_in = int(np.prod(shape[1:]))
        return x / np.float32(np.sqrt(fan_in))
    if ".norm_q." in key or ".norm_k." in key:
        return np.full(shape, qk_scale, np.float32) + 0.05 * x
    if "norm" in key and key.endswith("weight"):
        return 1.0 + 0.05 * x
    return 0.02 * x  # biases and tables


def write_random_diffusers_checkpoint(
    folder: str | pathlib.Path,
    config: ModelConfig,
    *,
    seed: int = 0,
    init: Init = "fan_in",
    qk_scale: float = 1.0,
    shard_bytes: int | None = None,
    force: bool = False,
) -> int:
    """Write random float32 weights for ``config``; returns the tensor bytes.

    ``init='fan_in'`` scales matrices by ``1/sqrt(fan_in)`` (a usable forward pass), ``'unit'`` draws every
    entry from N(0, 1). ``qk_scale`` sets the query/key RMSNorm gains (larger: sharper attention).
    ``shard_bytes`` splits the tensors into shards with an index, as large checkpoints ship.
    """
    rng = np.random.default_rng(seed)
    family = family_for_config(config)
    shapes = {}
    for target, (shape, _) in target_shapes(config, np.float32).items():
        stacked = stack_of(target, family.stacks) is not None
        for layer in range(shape[0]) if stacked else [None]:
            key = family.expected_key(target, layer)
            shapes[key] = _source_shape(family, key, shape[1:] if stacked else shape)
    with StagingDir(folder, force=force) as staging:
        out = staging.path
        weight_map, shard, shard_size, total, names = {}, {}, 0, 0, []

        def flush():
            name = (
                "diffusion_pytorch_model.safetensors"
                if shard_bytes is None
                else f"diffusion_pytorch_model-{len(names) + 1:05d}.safetensors"
            )
            save_file(shard, out / name)
            weight_map.update({k: name for k in shard})
            names.append(name)

        for key, shape in sorted(shapes.items()):
            shard[key] = _init(rng, key, shape, init, qk_scale)
            shard_size += shard[key].nbytes
            total += shard[key].nbytes
            if shard_bytes is not None and shard_size >= shard_bytes:
                flush()
                shard, shard_size = {}, 0
        if shard:
            flush()
        if shard_bytes is not None:
            with open(out / "diffusion_pytorch_model.safetensors.index.json", "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
        with open(out / "config.json", "w") as f:
            json.dump(config.to_diffusers_config(), f, indent=2)
        staging.publish()
    return total
