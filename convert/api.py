"""`convert_checkpoint`: a diffusers- or original-format Wan 2.1 checkpoint → an svg-jax checkpoint."""

import dataclasses
import logging
import pathlib
import sys
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from svg_jax.models import WanConfig, WanTransformer3DModel

from .checkpoint import FORMAT_VERSION, META_KEY, CheckpointWriter
from .errors import ConversionError
from .params import param_shapes, storage_path
from .plan import LeafPlan, detect_format, plan_conversion
from .source import SourceCheckpoint, open_source, read_tensor

log = logging.getLogger(__name__)

DTYPES = {"bf16": jnp.bfloat16, "fp32": jnp.float32}
DEFAULT_BUFFER_BYTES = 2**30


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_checkpoint` wrote."""

    dst: pathlib.Path
    config: WanConfig
    source_format: str
    param_dtype: str
    num_params: int
    num_tensors: int


def resolve_config(source: SourceCheckpoint, preset: str | None) -> WanConfig:
    """Architecture from ``--model`` or SRC's diffusers ``config.json``; both must agree if both exist."""
    from_file = None
    if source.config is not None and source.config.get("_class_name") == "WanTransformer3DModel":
        try:
            from_file = WanConfig.from_diffusers_config(source.config)
        except (ValueError, NotImplementedError) as e:
            raise ConversionError([f"config.json: {e}"]) from e
    if preset is None:
        if from_file is None:
            raise ConversionError(
                [
                    "SRC has no diffusers config.json (WanTransformer3DModel), so the architecture is "
                    "unknown; pass "
                    "--model with one of the presets (e.g. --model wan2.1-t2v-14b)"
                ]
            )
        return from_file
    try:
        config = WanConfig.preset(preset)
    except ValueError as e:
        raise ConversionError([str(e)]) from e
    if from_file is not None and from_file != config:
        diff = [
            f"{f.name}: config.json {getattr(from_file, f.name)!r} vs --model {getattr(config, f.name)!r}"
            for f in dataclasses.fields(WanConfig)
            if getattr(from_file, f.name) != getattr(config, f.name)
        ]
        raise ConversionError([f"--model {preset} disagrees with SRC's config.json: " + "; ".join(diff)])
    return config


def target_shapes(config: WanConfig, param_dtype: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every parameter of the model for ``config`` (abstract, no memory): dotted path → (shape, dtype)."""
    abstract = nnx.eval_shape(
        lambda: WanTransformer3DModel(config, rngs=nnx.Rngs(0), param_dtype=param_dtype)
    )
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in param_shapes(abstract).items()}


def _write_leaf(leaf: LeafPlan, source: SourceCheckpoint, writer: CheckpointWriter, progress: tqdm) -> None:
    """Read, transform, cast and queue one parameter's tensors one at a time (one per layer if stacked)."""
    for src in leaf.sources:
        array = src.transform.apply(read_tensor(source.tensors[src.key])).astype(leaf.dtype)
        writer.add(storage_path(leaf.target, src.layer), array)
        progress.update(1)


def convert_checkpoint(
    src: str | pathlib.Path,
    dst: str | pathlib.Path,
    *,
    model: str | None = None,
    dtype: Literal["bf16", "fp32"] = "bf16",
    fmt: Literal["auto", "diffusers", "original"] = "auto",
    force: bool = False,
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    progress: bool = True,
) -> ConversionResult:
    """Convert ``src`` to ``dst``; raises :class:`ConversionError` listing every problem, writing nothing.

    ``dtype`` is the storage dtype of the weights; diffusers' float32 modules (time embedder, modulation
    tables, affine norms) stay float32 whatever it is.
    """
    if dtype not in DTYPES:
        raise ConversionError([f"--dtype must be one of {sorted(DTYPES)}; got {dtype!r}"])
    if fmt not in ("auto", "diffusers", "original"):
        raise ConversionError([f"--format must be auto, diffusers or original; got {fmt!r}"])
    if buffer_bytes < 1:
        raise ConversionError(
            [f"the write buffer must be positive (--buffer-mb >= 1); got {buffer_bytes} bytes"]
        )
    dst = pathlib.Path(dst)
    if dst.exists() and not force:
        raise ConversionError([f"{dst} exists; pass --force to overwrite it"])

    source = open_source(src)
    source_format = detect_format(list(source.tensors)) if fmt == "auto" else fmt
    config = resolve_config(source, model)
    targets = target_shapes(config, DTYPES[dtype])
    plan = plan_conversion(
        {k: t.shape for k, t in source.tensors.items()},
        targets,
        fmt=source_format,
        num_layers=config.num_layers,
    )
    log.info(
        "converting %d %s-format tensors (%.1f MB) into %d parameters (%s)",
        len(source.tensors),
        source_format,
        source.nbytes / 2**20,
        len(plan),
        dtype,
    )

    num_tensors = sum(len(leaf.sources) for leaf in plan)
    with (
        CheckpointWriter(dst, force=force, buffer_bytes=buffer_bytes) as writer,
        tqdm(total=num_tensors, desc="convert", unit="tensor", file=sys.stderr, disable=not progress) as bar,
    ):
        for leaf in plan:
            _write_leaf(leaf, source, writer, bar)
        meta = {
            "format_version": FORMAT_VERSION,
            "param_dtype": np.dtype(DTYPES[dtype]).name,
            "source_format": source_format,
        }
        writer.commit({**config.to_diffusers_config(), META_KEY: meta})
    return ConversionResult(
        dst=dst,
        config=config,
        source_format=source_format,
        param_dtype=np.dtype(DTYPES[dtype]).name,
        num_params=sum(int(np.prod(leaf.shape)) for leaf in plan),
        num_tensors=num_tensors,
    )
