"""Read precomputed conditioning tensors (text-encoder outputs, image inputs, noise) from disk.

Text encoders are not ported yet, so ``svg-jax generate`` takes their outputs as files: safetensors or
``.npz``, holding one tensor under its expected name (``prompt_embeds``, ``negative_prompt_embeds``,
``image_embeds``, ``condition``, ``latents``) or a single tensor of any name. README "Generate a video"
shows how to write them with diffusers.
"""

import pathlib

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

SUFFIXES = (".safetensors", ".npz")


def _read_all(path: pathlib.Path, arg: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ValueError(f"{arg} {path}: no such file")
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{arg} {path}: expected a {' or '.join(SUFFIXES)} file; got suffix {path.suffix!r}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        return load_file(path)
    except (OSError, ValueError, SafetensorError) as e:
        raise ValueError(f"{arg} {path}: unreadable ({e})") from e


def read_embeddings(
    path: str | pathlib.Path, name: str, *, dim: int | None, arg: str, ndim: int = 3
) -> np.ndarray:
    """The float32 tensor ``name`` of ``path`` (or its only tensor), checked to be ``ndim``-D.

    For ``ndim=3`` a 2-D ``[L, D]`` tensor gains a batch axis; ``dim`` (when given) must equal the last
    axis. ``arg`` names the command-line flag in error messages.
    """
    path = pathlib.Path(path)
    tensors = _read_all(path, arg)
    if name in tensors:
        x = tensors[name]
    elif len(tensors) == 1:
        x = next(iter(tensors.values()))
    else:
        raise ValueError(f"{arg} {path}: no tensor named {name!r}; found {sorted(tensors)}")
    if ndim == 3 and x.ndim == 2:
        x = x[None]
    if x.ndim != ndim:
        raise ValueError(f"{arg} {path}: {name!r} must be {ndim}-D; got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating) and x.dtype.name != "bfloat16":
        raise ValueError(f"{arg} {path}: {name!r} must be floating point; got {x.dtype}")
    if dim is not None and x.shape[-1] != dim:
        raise ValueError(
            f"{arg} {path}: {name!r} must have last axis {dim} (the checkpoint's width for it); got shape "
            f"{list(x.shape)}"
        )
    return np.asarray(x, np.float32)
