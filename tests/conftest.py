"""Shared pytest setup: hypothesis profiles, the GPU marker, and the interpret/compiled kernel modes."""

import os

import jax
import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=6, derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ON_GPU = jax.default_backend() == "gpu"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (jax.default_backend() != 'gpu')")
    for item in items:
        if "gpu" in item.keywords and not ON_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(
    params=[
        pytest.param(True, id="interpret"),
        pytest.param(False, id="compiled", marks=pytest.mark.gpu),
    ]
)
def interpret(request) -> bool:
    """Run a kernel test in Pallas interpret mode (CPU) and compiled on the GPU."""
    return request.param


@pytest.fixture(scope="module")
def converted_model(tmp_path_factory):
    """``get(src, dtype="fp32")``: the diffusers checkpoint folder ``src`` converted by the real converter
    and loaded (compute dtype = storage dtype), once per module and source."""
    import jax.numpy as jnp

    from svg_jax.convert import convert_checkpoint
    from svg_jax.loading import load

    cache: dict = {}

    def get(src, dtype: str = "fp32"):
        if (src, dtype) not in cache:
            dst = tmp_path_factory.mktemp("ckpt") / "model"
            convert_checkpoint(src, dst, dtype=dtype, progress=False)
            cache[src, dtype] = load(dst, dtype={"fp32": jnp.float32, "bf16": jnp.bfloat16}[dtype])[0]
        return cache[src, dtype]

    return get
