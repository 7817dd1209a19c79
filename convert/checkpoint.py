"""The converted checkpoint on disk: ``DST/config.json`` + ``DST/params/`` (an orbax PyTree checkpoint).

``params/`` holds one entry per source tensor: top-level parameters under their model path and block
parameters per layer (``blocks.N.attn1.to_q.kernel``, ``single_transformer_blocks.N.proj_mlp.kernel``);
:func:`read_params` stacks them back. ``config.json`` is diffusers' config for the architecture (its
``_class_name`` names the model family) plus a ``_svg_jax`` entry (format version and parameter dtype);
keys starting with ``_`` are metadata to diffusers and to the config classes alike.

Writing streams: tensors are buffered up to ``buffer_bytes`` and flushed with orbax partial saves, so peak
memory is about the buffer plus one tensor, whatever the checkpoint size. The whole
checkpoint is built in a temporary folder next to DST and renamed into place at the end; on any error
the temporary folder is removed, so DST is never left partial.
"""

import json
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp

from .atomic import StagingDir
from .errors import ConversionError
from .params import Stack, flatten, nest, stack_of, storage_path, storage_shapes

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
META_KEY = "_svg_jax"
FORMAT_VERSION = 1


class CheckpointWriter:
    """Context manager that writes a converted checkpoint atomically; call :meth:`commit` to publish it."""

    def __init__(self, dst: str | pathlib.Path, *, force: bool = False, buffer_bytes: int = 2**30):
        self.dst = pathlib.Path(dst).absolute()
        if self.dst.exists() and not force:
            raise ConversionError([f"{self.dst} exists; pass --force to overwrite it"])
        if buffer_bytes < 1:
            raise ValueError(f"buffer_bytes must be positive; got {buffer_bytes}")
        self.force = force
        self.buffer_bytes = buffer_bytes
        self._buffer: dict[str, np.ndarray] = {}
        self._buffered = 0
        self._tmp: pathlib.Path | None = None
        self._staging: StagingDir | None = None
        self._committed = False

    def __enter__(self) -> "CheckpointWriter":
        self._staging = StagingDir(self.dst, force=self.force).__enter__()
        self._tmp = self._staging.path
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._staging is not None:
            self._staging.__exit__(exc_type, exc, tb)
        if exc_type is None and not self._committed:
            raise RuntimeError("CheckpointWriter closed without commit(); nothing was written")

    def add(self, path: str, array: np.ndarray) -> None:
        """Queue one parameter (dotted path); flushes when the buffer is over budget."""
        if path in self._buffer:
            raise ValueError(f"parameter {path} added twice")
        self._buffer[path] = array
        self._buffered += array.nbytes
        if self._buffered >= self.buffer_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        assert self._tmp is not None, "use CheckpointWriter as a context manager"
        log.debug("writing %d parameter(s), %.1f MB", len(self._buffer), self._buffered / 2**20)
        ocp.partial.save(self._tmp / PARAMS_DIR, nest(self._buffer))
        self._buffer, self._buffered = {}, 0

    def commit(self, config: Mapping[str, Any]) -> pathlib.Path:
        """Flush, finalize the orbax checkpoint, write ``config.json`` and move the result to DST."""
        assert self._tmp is not None, "use CheckpointWriter as a context manager"
        self._flush()
        ocp.partial.finalize(self._tmp / PARAMS_DIR)
        with open(self._tmp / CONFIG_FILE, "w") as f:
            json.dump(dict(config), f, indent=2, sort_keys=True)
            f.write("\n")
        self._staging.publish()
        self._committed = True
        log.info("wrote %s", self.dst)
        return self.dst


def read_config(path: str | pathlib.Path) -> dict[str, Any]:
    """``config.json`` of a converted checkpoint, checked to be ours."""
    path = pathlib.Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file() or not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(
            f"{path} is not a converted checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/); "
            "create one with `svg-jax convert SRC DST`"
        )
    with open(config_path) as f:
        config = json.load(f)
    meta = config.get(META_KEY, {})
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: {META_KEY}.format_version must be {FORMAT_VERSION}; "
            f"got {meta.get('format_version')!r}"
        )
    return config


def read_params(
    path: str | pathlib.Path,
    expected: Mapping[str, jax.ShapeDtypeStruct],
    *,
    stacks: Sequence[Stack],
) -> dict[str, jax.Array]:
    """Restore model parameters ``expected`` (those under ``stacks`` stacked along their leading axis)
    onto the default device.

    Peak device memory is the model plus one stacked parameter (per-layer parts are freed as each
    parameter is stacked).
    """
    params_dir = pathlib.Path(path).absolute() / PARAMS_DIR  # orbax needs absolute paths
    model_params, expected = expected, storage_shapes(expected, stacks)
    stored = flatten(ocp.metadata(params_dir).metadata)
    problems = [f"missing: {k}" for k in sorted(set(expected) - set(stored))]
    problems += [f"unexpected: {k}" for k in sorted(set(stored) - set(expected))]
    problems += [
        f"shape mismatch: {k} stored {tuple(stored[k].shape)}, model expects {tuple(v.shape)}"
        for k, v in sorted(expected.items())
        if k in stored and tuple(stored[k].shape) != tuple(v.shape)
    ]
    if problems:
        raise ConversionError([f"{params_dir}: {p}" for p in problems])
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in expected.items()}
    parts = flatten(ocp.load(params_dir, nest(abstract)))
    out = {}
    for name in model_params:
        if stack_of(name, stacks) is None:
            out[name] = parts.pop(name)
            continue
        layers = [parts.pop(storage_path(name, i, stacks)) for i in range(model_params[name].shape[0])]
        out[name] = jnp.stack(layers)
        for a in layers:
            a.delete()
    return out
