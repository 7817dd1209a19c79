"""Load a converted checkpoint (`svg-jax convert` output) into a ready model."""

import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from svg_jax.convert import family_for_class, read_config, read_params
from svg_jax.convert.checkpoint import CONFIG_FILE, META_KEY
from svg_jax.convert.families import ModelConfig
from svg_jax.convert.params import param_shapes, with_params


def load(path: str | pathlib.Path, *, dtype: DTypeLike = jnp.bfloat16) -> tuple[nnx.Module, ModelConfig]:
    """Return ``(model, config)`` from a converted checkpoint folder.

    The model class (``WanTransformer3DModel`` or ``HunyuanVideoTransformer3DModel``) follows the
    ``_class_name`` of its ``config.json``. ``dtype`` is the compute dtype (bfloat16 for inference, float32
    for parity checks); parameters keep the dtype they were converted to (``--dtype``), and diffusers'
    float32 modules stay float32.
    """
    raw = read_config(path)
    family = family_for_class(raw.get("_class_name"), where=str(pathlib.Path(path) / CONFIG_FILE))
    config = family.config_cls.from_diffusers_config(raw)
    param_dtype = np.dtype(raw[META_KEY]["param_dtype"])
    abstract = family.build(config, dtype=dtype, param_dtype=param_dtype)
    arrays = read_params(path, param_shapes(abstract), stacks=family.stacks)
    return with_params(abstract, arrays), config
