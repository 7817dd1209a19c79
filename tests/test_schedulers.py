"""Schedulers against diffusers goldens (tools/make_scheduler_fixtures.py), run as one jitted scan.

Tolerances on the per-step samples (float32, max abs):

* Euler and CogVideoX DDIM are bit-exact: their tables are diffusers' float32 values and every tensor op
  rounds as torch's does (``unfused_mul`` / ``true_div`` stop XLA's FMA contraction and reciprocal
  rewrite).
* UniPC is bit-exact given diffusers' coefficient scalars; the residual is torch's float32 ``log`` (MKL
  VML), which is off the correctly rounded value by one ulp for ~6% of inputs. λ = log α − log σ then
  cancels in h = λ_t − λ_s, so that ulp becomes ~1e-6 relative in the step's coefficients; over 50 steps
  the samples (|x| ≤ 4) drift by up to 2.6e-6 (measured: Wan shift 3, 50 steps). Swapping torch's log
  into the host tables makes every case exact, so 3e-6 bounds only that one rounding difference.
"""

import ast
import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svg_jax.schedulers import (
    SCHEDULERS,
    CogVideoXDDIMSchedule,
    CogVideoXDDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchEulerSchedule,
    Schedule,
    Scheduler,
    UniPCMultistepScheduler,
    UniPCSchedule,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "schedulers"
CASES = json.loads((FIXTURES / "cases.json").read_text())
TOL = {"flow_euler": 0.0, "cogvideox_ddim": 0.0, "unipc": 3e-6}  # see the module docstring


def _scheduler(case: dict):
    """Our scheduler built from a case's diffusers kwargs: the field names are the same."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in case["config"].items()}
    return SCHEDULERS[case["scheduler"]](**kwargs)


def _make_run(traces: list):
    """A jitted function returning every intermediate sample: one ``lax.scan`` over traced step indices."""

    @functools.partial(jax.jit, static_argnames="sched")
    def run(sched, schedule, sample, model_outputs):
        def body(carry, xs):
            traces.append(1)  # runs at trace time only
            x, state = carry
            i, v = xs
            x, state = sched.step(schedule, state, i, v, x)
            return (x, state), x

        carry = (sample, sched.init_state(schedule, sample))
        steps = jnp.arange(schedule.num_steps, dtype=jnp.int32)
        _, xs = jax.lax.scan(body, carry, (steps, model_outputs))
        return xs  # [S, *shape]

    return run


@pytest.mark.parametrize("name", sorted(CASES))
def test_parity_with_diffusers(name):
    case = CASES[name]
    golden = np.load(FIXTURES / f"{name}.npz")
    sched = _scheduler(case)
    schedule = sched.set_timesteps(case["num_steps"])

    np.testing.assert_array_equal(np.asarray(schedule.timesteps), golden["timesteps"].astype(np.float32))
    assert schedule.timesteps.dtype == jnp.float32 and schedule.num_steps == len(golden["timesteps"])
    if "sigmas" in golden:
        np.testing.assert_array_equal(np.asarray(schedule.sigmas), golden["sigmas"])
    else:  # diffusers keeps ᾱ in float64; ours is its float32 rounding
        np.testing.assert_array_equal(
            np.asarray(schedule.alphas_cumprod), golden["alphas_cumprod"].astype(np.float32)
        )
        np.testing.assert_allclose(np.asarray(schedule.alphas_cumprod), golden["alphas_cumprod"], atol=1e-7)

    traces = []
    run = _make_run(traces)
    args = (schedule, jnp.asarray(golden["sample"]), jnp.asarray(golden["model_outputs"]))
    samples = np.asarray(run(sched, *args))
    run(sched, *args)  # a second call reuses the executable
    assert len(traces) == 1, "the step loop must trace (and compile) once"
    assert samples.dtype == np.float32
    err = np.abs(samples - golden["prev_samples"]).max(axis=tuple(range(1, samples.ndim)))  # per step
    assert err.max() <= TOL[case["scheduler"]], f"{name}: max error {err.max():.3g} at step {err.argmax()}"


@pytest.mark.parametrize("key", sorted(SCHEDULERS))
def test_fori_loop_compiles_once_and_state_keeps_its_shape(key):
    sched = SCHEDULERS[key]()
    schedule = sched.set_timesteps(6)
    x = jax.random.normal(jax.random.key(0), (1, 4, 2, 3, 3), jnp.float32)
    state0 = sched.init_state(schedule, x)
    struct = lambda tree: (jax.tree.structure(tree), [(a.shape, a.dtype) for a in jax.tree.leaves(tree)])
    struct0 = struct(state0)
    traces = []

    @jax.jit
    def run(schedule, x):
        def body(i, carry):
            traces.append(i)
            x, state = carry
            v = jnp.sin(x + i.astype(jnp.float32))  # a stand-in model
            return sched.step(schedule, state, i, v, x)

        return jax.lax.fori_loop(0, schedule.num_steps, body, (x, sched.init_state(schedule, x)))

    x_loop, state_loop = run(schedule, x)
    assert len(traces) == 1
    assert struct(state_loop) == struct0

    # The same steps eagerly, with Python-int indices: same numbers, same state structure every step.
    xe, state = x, state0
    for i in range(schedule.num_steps):
        xe, state = sched.step(schedule, state, i, jnp.sin(xe + i), xe)
        assert struct(state) == struct0
        assert xe.dtype == jnp.float32 and xe.shape == x.shape
    np.testing.assert_allclose(np.asarray(x_loop), np.asarray(xe), atol=1e-6)


@pytest.mark.parametrize("key", sorted(SCHEDULERS))
def test_bf16_inputs_compute_in_float32(key):
    sched = SCHEDULERS[key]()
    schedule = sched.set_timesteps(4)
    kx, kv = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (2, 3, 4), jnp.float32)
    v = jax.random.normal(kv, (4, 2, 3, 4), jnp.float32).astype(jnp.bfloat16)
    state_bf, state_f32 = sched.init_state(schedule, x), sched.init_state(schedule, x)
    x_bf = x_f32 = x
    step = jax.jit(sched.step)
    for i in range(4):
        x_bf, state_bf = step(schedule, state_bf, i, v[i], x_bf)
        x_f32, state_f32 = step(schedule, state_f32, i, v[i].astype(jnp.float32), x_f32)
        assert x_bf.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(x_bf), np.asarray(x_f32))
    # A bf16 sample is upcast too.
    out, _ = step(schedule, sched.init_state(schedule, x), 0, v[0], x.astype(jnp.bfloat16))
    assert out.dtype == jnp.float32


def test_public_api():
    assert set(SCHEDULERS) == {"unipc", "flow_euler", "cogvideox_ddim"}
    schedule_types = {
        "unipc": UniPCSchedule,
        "flow_euler": FlowMatchEulerSchedule,
        "cogvideox_ddim": CogVideoXDDIMSchedule,
    }
    for key, cls in SCHEDULERS.items():
        sched = cls()
        assert isinstance(sched, Scheduler)
        assert hash(sched) == hash(cls()) and sched == cls()  # a static jit argument
        schedule = sched.set_timesteps(3)
        assert isinstance(schedule, schedule_types[key]) and isinstance(schedule, Schedule)
        leaves, treedef = jax.tree.flatten(schedule)
        assert all(isinstance(leaf, jax.Array) for leaf in leaves)
        assert jax.tree.unflatten(treedef, leaves).num_steps == 3  # num_steps is static metadata
    wan = UniPCMultistepScheduler(flow_shift=5.0, disable_corrector=[0, 2])
    assert wan.disable_corrector == (0, 2) and hash(wan) == hash(dataclasses.replace(wan))


def test_reference_values():
    """Spot values from video_dits.md §4 (independent of the fixtures)."""
    ts = np.asarray(UniPCMultistepScheduler().set_timesteps(50).timesteps)
    assert ts[:3].tolist() == [999, 993, 986] and ts[-1] == 60
    ts = np.asarray(FlowMatchEulerDiscreteScheduler().set_timesteps(50).timesteps)
    assert ts[0] == 1000.0 and abs(ts[1] - 997.09) < 0.01
    ddim = CogVideoXDDIMScheduler().set_timesteps(50)
    assert np.asarray(ddim.timesteps)[[0, 1, -1]].tolist() == [999, 979, 19]
    assert float(ddim.alphas_cumprod[-1]) == 0.0  # zero terminal SNR


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (
            UniPCMultistepScheduler,
            dict(prediction_type="epsilon"),
            "prediction_type must be 'flow_prediction'",
        ),
        (UniPCMultistepScheduler, dict(use_flow_sigmas=False), "use_flow_sigmas must be True"),
        (UniPCMultistepScheduler, dict(predict_x0=False), "predict_x0 must be True"),
        (UniPCMultistepScheduler, dict(solver_order=4), r"solver_order must be an int in \[1, 3\]"),
        (UniPCMultistepScheduler, dict(solver_order=2.0), "solver_order must be an int"),
        (UniPCMultistepScheduler, dict(solver_type="midpoint"), "solver_type must be one of"),
        (
            UniPCMultistepScheduler,
            dict(solver_type="bh1"),
            "solver_type must be 'bh2' when final_sigmas_type",
        ),
        (UniPCMultistepScheduler, dict(final_sigmas_type="max"), "final_sigmas_type must be one of"),
        (UniPCMultistepScheduler, dict(lower_order_final=False), "lower_order_final must be True"),
        (
            UniPCMultistepScheduler,
            dict(lower_order_final=False, solver_order=3, final_sigmas_type="sigma_min"),
            "lower_order_final must be True",
        ),
        (UniPCMultistepScheduler, dict(flow_shift=0.0), "flow_shift must be a finite number > 0"),
        (UniPCMultistepScheduler, dict(flow_shift=float("nan")), "flow_shift must be a finite number > 0"),
        (UniPCMultistepScheduler, dict(disable_corrector=(-1,)), "disable_corrector must be a tuple"),
        (UniPCMultistepScheduler, dict(disable_corrector=3), "disable_corrector must be a tuple"),
        (FlowMatchEulerDiscreteScheduler, dict(shift=-7.0), "shift must be a finite number > 0"),
        (FlowMatchEulerDiscreteScheduler, dict(num_train_timesteps=0), "num_train_timesteps must be an int"),
        (CogVideoXDDIMScheduler, dict(prediction_type="epsilon"), "prediction_type must be 'v_prediction'"),
        (CogVideoXDDIMScheduler, dict(timestep_spacing="leading"), "timestep_spacing must be 'trailing'"),
        (CogVideoXDDIMScheduler, dict(beta_schedule="linear"), "beta_schedule must be 'scaled_linear'"),
        (CogVideoXDDIMScheduler, dict(clip_sample=True), "clip_sample must be False"),
        (CogVideoXDDIMScheduler, dict(snr_shift_scale=0), "snr_shift_scale must be a finite number > 0"),
        (CogVideoXDDIMScheduler, dict(beta_end=1.5), "beta_end must be < 1"),
        (CogVideoXDDIMScheduler, dict(rescale_betas_zero_snr=1), "rescale_betas_zero_snr must be one of"),
    ],
)
def test_config_validation(cls, kwargs, match):
    # Under `pytest --jaxtyping-packages=svg_jax,...` the annotations reject wrong types first (a
    # TypeError naming the parameter); plain runs reach __post_init__'s ValueError.
    with pytest.raises((ValueError, TypeError), match=f"{match}|{next(iter(kwargs))}"):
        cls(**kwargs)


@pytest.mark.parametrize("key", sorted(SCHEDULERS))
@pytest.mark.parametrize("num_steps", [0, -3, 2.5, True, "50", None])
def test_num_steps_validation(key, num_steps):
    with pytest.raises((ValueError, TypeError), match="num_steps must be an int >= 1|num_steps"):
        SCHEDULERS[key]().set_timesteps(num_steps)


def test_num_steps_accepts_numpy_ints():
    assert UniPCMultistepScheduler().set_timesteps(np.int64(5)).num_steps == 5


def test_ddim_refuses_step_counts_diffusers_gets_wrong():
    sched = CogVideoXDDIMScheduler()
    with pytest.raises(ValueError, match="num_steps must be <= t_train=1000"):
        sched.set_timesteps(1001)
    # np.arange(1000, 0, -1000/61) has 62 elements; diffusers would run a 62nd step at timestep -1.
    with pytest.raises(ValueError, match=r"yields 62 timesteps \(ending at -1\) for num_steps=61"):
        sched.set_timesteps(61)
    assert sched.set_timesteps(60).num_steps == 60


def test_imports_only_jax_numpy_stdlib():
    import sys

    allowed = {"jax", "numpy"} | set(sys.stdlib_module_names)
    for path in sorted((ROOT / "svg_jax" / "schedulers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] not in allowed]
            assert not bad, f"{path.name} imports {bad}"
