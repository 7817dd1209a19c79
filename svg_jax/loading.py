"""Load a converted checkpoint (`svg-jax convert` output) into a ready model."""

import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from svg_jax.convert import read_config, read_params
from svg_jax.convert.checkpoint import META_KEY
from svg_jax.convert.params import param_shapes, with_params
from svg_jax.models import WanConfig, WanTransformer3DModel


def load(
    path: str | pathlib.Path, *, dtype: DTypeLike = jnp.bfloat16
) -> tuple[WanTransformer3DModel, WanConfig]:
    """Return ``(model, config)`` from a converted checkpoint folder.

    ``dtype`` is the compute dtype (bfloat16 for inference, float32 for parity checks); parameters keep the
    dtype they were converted to (``--dtype``), and diffusers' float32 modules stay float32.
    """
    raw = read_config(path)
    config = WanConfig.from_diffusers_config(raw)
    param_dtype = np.dtype(raw[META_KEY]["param_dtype"])
    abstract = nnx.eval_shape(
        lambda: WanTransformer3DModel(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    )
    arrays = read_params(path, param_shapes(abstract), num_layers=config.num_layers)
    return with_params(abstract, arrays), config
