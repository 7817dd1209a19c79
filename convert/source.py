"""Find and read a source checkpoint: safetensors files (single, sharded with an index, or a folder).

Only headers are read up front (names, shapes, dtypes). :func:`read_tensor` then loads one tensor at a
time, opening its file for that read only, so memory-mapped pages are released after every tensor.
Pickle-based formats (``.pt``, ``.bin``, ...) are refused: loading them can run arbitrary code.
"""

import dataclasses
import json
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors import safe_open

from .errors import ConversionError
from .rules import COMFY_PREFIX

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
SUPPORTED_DTYPES = ("F64", "F32", "F16", "BF16")
_INDEX_SUFFIX = ".safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One source tensor: its name in the file (``file_key``) and where/what it is."""

    file: pathlib.Path
    file_key: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name, e.g. "BF16"

    @property
    def nbytes(self) -> int:
        itemsize = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}[self.dtype]
        return int(np.prod(self.shape, dtype=np.int64)) * itemsize


@dataclasses.dataclass(frozen=True)
class SourceCheckpoint:
    """Headers of every tensor (by key with any ComfyUI prefix stripped) plus ``config.json`` if present."""

    files: tuple[pathlib.Path, ...]
    tensors: Mapping[str, TensorSpec]
    config: Mapping[str, Any] | None

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _refuse_pickle(path: pathlib.Path) -> ConversionError:
    return ConversionError(
        [
            f"{path}: pickle checkpoints ({', '.join(PICKLE_SUFFIXES)}) are refused because loading them "
            "can run "
            "arbitrary code; convert it to safetensors first (e.g. in torch: "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors'))"
        ]
    )


def _files_from_index(index_path: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, str]]:
    with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError([f"{index_path}: no 'weight_map' in the index"])
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not (index_path.parent / n).is_file()]
    if missing:
        raise ConversionError(
            [f"{index_path}: shard {n} listed in the index does not exist" for n in missing]
        )
    return [index_path.parent / n for n in names], weight_map


def _discover(src: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, str] | None, pathlib.Path]:
    """Safetensors files, the index's weight map (if any) and the folder that may hold config.json."""
    if not src.exists():
        raise ConversionError([f"{src}: no such file or directory"])
    if src.is_file():
        if src.suffix in PICKLE_SUFFIXES:
            raise _refuse_pickle(src)
        if src.name.endswith(_INDEX_SUFFIX):
            files, weight_map = _files_from_index(src)
            return files, weight_map, src.parent
        if src.suffix == ".safetensors":
            return [src], None, src.parent
        raise ConversionError([f"{src}: expected a .safetensors file, a *{_INDEX_SUFFIX} or a folder"])
    indexes = sorted(src.glob(f"*{_INDEX_SUFFIX}"))
    if len(indexes) > 1:
        raise ConversionError(
            [f"{src}: several indexes {[p.name for p in indexes]}; pass one of them as SRC"]
        )
    if indexes:
        files, weight_map = _files_from_index(indexes[0])
        return files, weight_map, src
    files = sorted(src.glob("*.safetensors"))
    if not files:
        pickles = sorted(p for p in src.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise _refuse_pickle(pickles[0])
        raise ConversionError([f"{src}: no *.safetensors files"])
    return files, None, src


def open_source(src: str | pathlib.Path) -> SourceCheckpoint:
    """Read the headers of ``src`` (file, index or folder) and validate names, dtypes and the index."""
    src = pathlib.Path(src)
    files, weight_map, folder = _discover(src)
    tensors: dict[str, TensorSpec] = {}
    problems: list[str] = []
    for path in files:
        with safe_open(path, framework="numpy") as f:
            for file_key in f.keys():
                s = f.get_slice(file_key)
                spec = TensorSpec(path, file_key, tuple(int(d) for d in s.get_shape()), s.get_dtype())
                key = file_key.removeprefix(COMFY_PREFIX)
                if spec.dtype not in SUPPORTED_DTYPES:
                    problems.append(
                        f"unsupported dtype: {file_key} is {spec.dtype}; expected one of {SUPPORTED_DTYPES}"
                    )
                if key in tensors:
                    problems.append(
                        f"duplicate key: {key} is in both {tensors[key].file.name} and {path.name}"
                    )
                if weight_map is not None and weight_map.get(file_key) != path.name:
                    problems.append(
                        f"index mismatch: {file_key} is in {path.name} but the index says "
                        f"{weight_map.get(file_key)}"
                    )
                tensors[key] = spec
    if weight_map is not None:
        present = {t.file_key for t in tensors.values()}
        problems += [
            f"index mismatch: {k} is listed in the index but in no shard"
            for k in weight_map
            if k not in present
        ]
    if problems:
        raise ConversionError(problems)
    config = None
    config_path = folder / "config.json"
    if config_path.is_file():
        with open(config_path) as f:
            config = json.load(f)
    log.info(
        "source %s: %d tensors in %d file(s), %.1f MB",
        src,
        len(tensors),
        len(files),
        sum(t.nbytes for t in tensors.values()) / 2**20,
    )
    return SourceCheckpoint(tuple(files), tensors, config)


def read_tensor(spec: TensorSpec) -> np.ndarray:
    """Load one tensor; the file is opened (memory-mapped) for this read only."""
    with safe_open(spec.file, framework="numpy") as f:
        return f.get_tensor(spec.file_key)
