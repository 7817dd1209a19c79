"""Full-model parity with diffusers' WanTransformer3DModel, weights loaded through the real converter.

Goldens come from tools/make_wan_fixtures.py (torch + diffusers, float32 CPU): diffusers' own tiny Wan test
config (T2V, sharded diffusers checkpoint), the I2V config of video_dits.md §6 (original format with the
ComfyUI prefix) and a tiny FLF2V config. Every case runs from both the diffusers-format and the
original-format copy of the same weights.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from svg_jax.convert import convert_checkpoint
from svg_jax.loading import load

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "wan"
REL_TOL_F32 = 1e-5  # issue #5: max |ours - diffusers| / max |diffusers| in float32
REL_TOL_BF16 = 5e-2  # bf16 compute with float32 islands vs the float32 golden


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def model_inputs(io: dict) -> tuple:
    image = io.get("encoder_hidden_states_image")
    return (
        jnp.asarray(io["hidden_states"]),
        jnp.asarray(io["timestep"]),
        jnp.asarray(io["encoder_hidden_states"]),
        None if image is None else jnp.asarray(image),
    )


@jax.jit
def forward(model, *inputs):
    return model(*inputs)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(case, source format, storage dtype) → converted checkpoint folder, converted once per module."""
    cache: dict = {}

    def get(case: str, fmt: str, dtype: str = "fp32") -> pathlib.Path:
        key = (case, fmt, dtype)
        if key not in cache:
            dst = tmp_path_factory.mktemp("ckpt") / f"{case}-{fmt}-{dtype}"
            convert_checkpoint(FIXTURES / case / fmt, dst, dtype=dtype, progress=False)
            cache[key] = dst
        return cache[key]

    return get


@pytest.mark.parametrize("fmt", ["diffusers", "original"])
@pytest.mark.parametrize("case", ["t2v", "i2v", "flf2v"])
def test_forward_matches_diffusers_f32(converted, case, fmt):
    model, config = load(converted(case, fmt), dtype=jnp.float32)
    io = load_file(FIXTURES / case / "io.safetensors")
    out = forward(model, *model_inputs(io))
    assert out.shape == io["output"].shape and out.dtype == jnp.float32
    assert rel_err(out, io["output"]) <= REL_TOL_F32


@pytest.mark.parametrize("case", ["t2v", "i2v"])
def test_bf16_weights_and_compute_track_f32(converted, case):
    """bf16 storage + bf16 compute (the inference mode) stays close to the float32 golden."""
    model, _ = load(converted(case, "diffusers", "bf16"), dtype=jnp.bfloat16)
    io = load_file(FIXTURES / case / "io.safetensors")
    out = forward(model, *model_inputs(io))
    assert out.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(out, np.float32)).all()
    assert rel_err(out, io["output"]) <= REL_TOL_BF16


def test_float_timesteps_accepted(converted):
    """diffusers' schedulers pass int64 or float timesteps; both embed identically for integral values."""
    model, _ = load(converted("t2v", "diffusers"), dtype=jnp.float32)
    io = load_file(FIXTURES / "t2v" / "io.safetensors")
    x, t, ctx, _ = model_inputs(io)
    np.testing.assert_array_equal(forward(model, x, t, ctx), forward(model, x, t.astype(jnp.float32), ctx))
