"""Deterministic random Wan checkpoints in diffusers format (config.json + safetensors), without torch.

For the demo (a tiny model that runs on a CPU) and for tests that need a checkpoint larger than the
committed fixtures. Keys, shapes and tensor layouts are exactly what ``save_pretrained`` writes, so the
output goes through ``svg-jax convert`` like a downloaded checkpoint.
"""

import json
import pathlib
from typing import Literal

import numpy as np
from safetensors.numpy import save_file

from svg_jax.models import WanConfig

from .api import target_shapes
from .atomic import StagingDir
from .rules import expected_diffusers_key

Init = Literal["unit", "fan_in"]


def _source_shape(target: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """torch layout of a target parameter (inverse of the linear / conv3d kernel transforms)."""
    if target == "patch_embedding.kernel":
        t, h, w, i, o = shape
        return (o, i, t, h, w)
    if target.endswith(".kernel"):
        return shape[::-1]
    return shape


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
    config: WanConfig,
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
    shapes = {}
    for target, (shape, _) in target_shapes(config, np.float32).items():
        stacked = target.startswith("blocks.")
        for layer in range(config.num_layers) if stacked else [None]:
            source_shape = _source_shape(target, shape[1:] if stacked else shape)
            shapes[expected_diffusers_key(target, layer)] = source_shape
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
