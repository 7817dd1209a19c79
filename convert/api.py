"""`convert_checkpoint`: a Wan 2.1 (diffusers/original) or HunyuanVideo (diffusers) checkpoint → svg-jax."""

import dataclasses
import logging
import pathlib
import sys
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from .checkpoint import FORMAT_VERSION, META_KEY, CheckpointWriter
from .errors import ConversionError
from .families import (
    CLASS_NAMES,
    FAMILIES,
    PRESET_NAMES,
    ModelConfig,
    family_for_config,
    family_for_preset,
)
from .params import Stack, param_shapes, storage_path
from .plan import LeafPlan, detect_format, plan_conversion
from .source import SourceCheckpoint, open_source, read_tensor

log = logging.getLogger(__name__)

DTYPES = {"bf16": jnp.bfloat16, "fp32": jnp.float32}
DEFAULT_BUFFER_BYTES = 2**30


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_checkpoint` wrote."""

    dst: pathlib.Path
    config: ModelConfig
    source_format: str
    param_dtype: str
    num_params: int
    num_tensors: int


def _config_from_file(source: SourceCheckpoint) -> ModelConfig | None:
    """The architecture in SRC's diffusers ``config.json``, or None without one of a known ``_class_name``."""
    if source.config is None:
        return None
    family = next((f for f in FAMILIES if f.class_name == source.config.get("_class_name")), None)
    if family is None:
        return None
    try:
        return family.config_cls.from_diffusers_config(source.config)
    except (ValueError, NotImplementedError) as e:
        raise ConversionError([f"config.json: {e}"]) from e


def resolve_config(source: SourceCheckpoint, preset: str | None) -> ModelConfig:
    """Architecture from ``--model`` or SRC's diffusers ``config.json``; both must agree if both exist.

    The model family comes from the config's ``_class_name`` or the preset name.
    """
    from_file = _config_from_file(source)
    if preset is None:
        if from_file is None:
            found = (
                "" if source.config is None else f" (its _class_name is {source.config.get('_class_name')!r})"
            )
            raise ConversionError(
                [
                    f"SRC has no diffusers config.json of a known model ({', '.join(CLASS_NAMES)}){found}, "
                    "so the architecture is unknown; pass --model with one of the presets "
                    f"(e.g. --model wan2.1-t2v-14b); known presets: {list(PRESET_NAMES)}"
                ]
            )
        return from_file
    family = family_for_preset(preset)
    config = family.presets[preset]
    if from_file is not None and not isinstance(from_file, family.config_cls):
        file_family = family_for_config(from_file)
        raise ConversionError(
            [
                f"--model {preset} is a {family.name} preset but SRC's config.json is a "
                f"{file_family.class_name}; drop --model or pass a {file_family.name} preset "
                f"({sorted(file_family.presets)})"
            ]
        )
    if from_file is not None and from_file != config:
        diff = [
            f"{f.name}: config.json {getattr(from_file, f.name)!r} vs --model {getattr(config, f.name)!r}"
            for f in dataclasses.fields(config)
            if getattr(from_file, f.name) != getattr(config, f.name)
        ]
        raise ConversionError([f"--model {preset} disagrees with SRC's config.json: " + "; ".join(diff)])
    return config


def target_shapes(config: ModelConfig, param_dtype: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every parameter of the model for ``config`` (abstract, no memory): dotted path → (shape, dtype)."""
    abstract = family_for_config(config).build(config, dtype=jnp.bfloat16, param_dtype=param_dtype)
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in param_shapes(abstract).items()}


def _write_leaf(
    leaf: LeafPlan,
    source: SourceCheckpoint,
    writer: CheckpointWriter,
    progress: tqdm,
    stacks: tuple[Stack, ...],
) -> None:
    """Read, transform, cast and queue one parameter's tensors one at a time (one per layer if stacked)."""
    for src in leaf.sources:
        array = src.transform.apply(read_tensor(source.tensors[src.key])).astype(leaf.dtype)
        writer.add(storage_path(leaf.target, src.layer, stacks), array)
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
    config = resolve_config(source, model)
    family = family_for_config(config)
    source_format = detect_format(list(source.tensors), family) if fmt == "auto" else fmt
    targets = target_shapes(config, DTYPES[dtype])
    plan = plan_conversion(
        {k: t.shape for k, t in source.tensors.items()}, targets, family=family, fmt=source_format
    )
    log.info(
        "converting %d %s-format %s tensors (%.1f MB) into %d parameters (%s)",
        len(source.tensors),
        source_format,
        family.name,
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
            _write_leaf(leaf, source, writer, bar, family.stacks)
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
