"""HunyuanVideo through the shared sampling loop: diffusers' HunyuanVideoPipeline parity (embedded guidance,
true CFG with a negative prompt of another length), SVG1/SVG2 on the joint [video, text] sequence, and
argument errors. Goldens: ``tools/make_hunyuan_sampling_fixtures.py``."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from sampling_utils import SVG1_EXACT, SVG2_EXACT, assert_compiled_sparse_samples_like_dense

from svg_jax import AttentionConfig, HunyuanPrompt
from svg_jax.sampling import sample
from svg_jax.schedulers import FlowMatchEulerDiscreteScheduler

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CASES = json.loads((FIXTURES / "sampling" / "hunyuan_cases.json").read_text())["cases"]
PARITY_TOL = 1e-4  # final latents, float32, relative to max |diffusers|


@pytest.fixture(scope="module")
def model(converted_model):
    return converted_model(FIXTURES / "hunyuan" / "padded" / "diffusers")


def golden(case: str) -> dict:
    return load_file(FIXTURES / "sampling" / f"{case}.safetensors")


def prompts(g: dict) -> tuple[HunyuanPrompt, HunyuanPrompt | None]:
    prompt = HunyuanPrompt(g["prompt_embeds"], g["prompt_mask"], g["pooled"])
    if "negative_embeds" not in g:
        return prompt, None
    return prompt, HunyuanPrompt(g["negative_embeds"], g["negative_mask"], g["negative_pooled"])


def run(model, case: str, attention: AttentionConfig, **kw):
    g, meta = golden(case), CASES[case]
    prompt, negative = prompts(g)
    args = dict(
        latents=g["latents"],
        prompt_embeds=prompt,
        negative_embeds=negative,
        guidance_scale=meta["true_cfg_scale"],
        embedded_guidance_scale=meta["embedded_guidance_scale"],
        num_steps=meta["steps"],
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        attention=attention,
    )
    return sample(model, **(args | kw))


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_dense_sampling_matches_diffusers_hunyuan_pipeline(model, case):
    result = run(model, case, AttentionConfig(method="dense"))
    g = golden(case)
    np.testing.assert_array_equal(np.asarray(result.timesteps), g["timesteps"])
    err = rel_err(result.latents, g["final"])
    assert err <= PARITY_TOL, f"{case}: final latents differ from diffusers by {err:.2e}"
    passes = 2 if CASES[case]["true_cfg_scale"] > 1 else 1
    assert result.stats.density.shape[:3] == (CASES[case]["steps"], passes, 4)  # 2 double + 2 single layers


@pytest.mark.parametrize(
    "attention",
    [AttentionConfig(method="svg1", svg1=SVG1_EXACT), AttentionConfig(method="svg2", svg2=SVG2_EXACT)],
    ids=["svg1-density1", "svg2-top_p1"],
)
@pytest.mark.parametrize("padded", [False, True], ids=["full-prompts", "padded-prompts"])
def test_exact_sparse_settings_sample_like_dense(model, attention, padded):
    """Everything selected: equal to dense, with full prompts and with padded prompts of two lengths (cond
    / uncond): both methods mask padded text keys per element (SVG1 through the kernels' key_padding
    range, SVG2 through its prompt / padding pseudo-clusters)."""
    prompt, negative = prompts(golden("hunyuan_true_cfg"))
    full = lambda p: p if padded else HunyuanPrompt(p.embeds, np.ones_like(p.mask), p.pooled)
    kw = dict(prompt_embeds=full(prompt), negative_embeds=full(negative))
    assert padded == bool(np.any(np.asarray(kw["prompt_embeds"].mask) == 0))
    dense = run(model, "hunyuan_true_cfg", AttentionConfig(method="dense"), **kw)
    sparse = run(model, "hunyuan_true_cfg", attention, **kw)
    assert rel_err(sparse.latents, dense.latents) <= 1e-5
    if not padded:  # (SVG2's density leaves out the padded pairs)
        assert float(jnp.min(sparse.stats.density[1:])) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(embedded_guidance_scale=None), "embedded_guidance_scale is required"),
        (dict(prompt_embeds=np.zeros((1, 8, 16), np.float32)), "svg_jax.HunyuanPrompt"),
        (dict(condition=np.zeros((1, 4, 2, 8, 8), np.float32)), "text-to-video"),
    ],
)
def test_bad_arguments_name_the_argument(model, kw, match):
    with pytest.raises(ValueError, match=match):
        run(model, "hunyuan_embedded", AttentionConfig(method="dense"), **kw)


def test_prompt_shapes_are_checked(model):
    g = golden("hunyuan_embedded")
    short_mask = HunyuanPrompt(g["prompt_embeds"], g["prompt_mask"][:, :5], g["pooled"])
    with pytest.raises(ValueError, match=r"prompt_embeds: embeds, mask and pooled must be"):
        run(model, "hunyuan_embedded", AttentionConfig(method="dense"), prompt_embeds=short_mask)


@pytest.mark.gpu
@pytest.mark.parametrize("method, padded", [("svg1", False), ("svg1", True), ("svg2", True)])
def test_gpu_sampling_with_compiled_kernels_equals_dense_at_full_selection(method, padded):
    """On a GPU the sparse phase runs the Pallas kernels over [video, text]: at exact settings HunyuanVideo
    samples like dense (bf16), also with padded prompts (the kernels' per-element padding masks)."""
    import jax
    from flax import nnx

    from svg_jax.models import HunyuanVideoConfig, HunyuanVideoTransformer3DModel

    config = HunyuanVideoConfig(
        in_channels=16,
        out_channels=16,
        num_attention_heads=2,
        attention_head_dim=64,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        text_embed_dim=32,
        pooled_projection_dim=16,
        rope_axes_dim=(16, 24, 24),
    )
    model = nnx.jit(lambda: HunyuanVideoTransformer3DModel(config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16))()
    keys = jax.random.split(jax.random.key(0), 5)
    latents = jax.random.normal(keys[0], (1, 16, 4, 32, 32))  # 4 frames × 256 tokens, + 16 text slots

    def prompt(k1, k2, valid):
        mask = (jnp.arange(16) < (valid if padded else 16)).astype(jnp.int32)[None]
        return HunyuanPrompt(jax.random.normal(k1, (1, 16, 32)), mask, jax.random.normal(k2, (1, 16)))

    common = dict(
        latents=latents,
        prompt_embeds=prompt(keys[1], keys[2], 11),
        negative_embeds=prompt(keys[3], keys[4], 5),
        guidance_scale=3.0,
        embedded_guidance_scale=6.0,
        num_steps=4,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )
    assert_compiled_sparse_samples_like_dense(model, method, **common)
