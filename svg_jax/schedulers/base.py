"""The protocol every scheduler follows, the empty state of single-step schedulers, and config checks.

A scheduler is a frozen, hashable config (a static jit argument). ``set_timesteps`` runs on the host once
per generation and returns a ``Schedule`` pytree (device tables plus the static ``num_steps``);
``init_state`` and ``step`` are traceable, with a traced step index, so one ``lax.fori_loop`` /
``lax.scan`` over the steps compiles once::

    schedule = sched.set_timesteps(50)
    state = sched.init_state(schedule, x)
    def body(i, carry):
        x, state = carry
        v = model(x, schedule.timesteps[i])
        return sched.step(schedule, state, i, v, x)
    x, state = jax.lax.fori_loop(0, schedule.num_steps, body, (x, state))

``step`` must be called with ``i = 0, 1, …, num_steps − 1`` in order: multistep state assumes it.
"""

import dataclasses
import numbers
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np


@runtime_checkable
class Schedule(Protocol):
    """What every scheduler's ``set_timesteps`` returns (besides its own tables)."""

    timesteps: jax.Array  # float32 [S]: the values the pipeline passes to the transformer
    num_steps: int  # S, static


@runtime_checkable
class Scheduler(Protocol):
    """A frozen scheduler config: host-side ``set_timesteps``, traceable ``init_state`` and ``step``."""

    def set_timesteps(self, num_steps: int | np.integer) -> Any: ...

    def init_state(self, schedule: Any, sample: jax.Array) -> Any: ...

    def step(
        self, schedule: Any, state: Any, i: jax.Array | int, model_output: jax.Array, sample: jax.Array
    ) -> tuple[jax.Array, Any]: ...


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoState:
    """State of a scheduler whose step depends on the current sample only (no leaves)."""


class Stateless:
    """Mixin of the single-step schedulers (Euler, DDIM): no state between steps, float32 inputs."""

    def init_state(self, schedule: Any, sample: jax.Array) -> NoState:
        """Nothing is carried from step to step."""
        del schedule, sample
        return NoState()

    @staticmethod
    def float32_inputs(
        i: jax.Array | int, model_output: jax.Array, sample: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(i, v, x)``: the step index as int32, the model output and the sample as float32."""
        return (
            jnp.asarray(i, jnp.int32),
            jnp.asarray(model_output).astype(jnp.float32),
            jnp.asarray(sample).astype(jnp.float32),
        )


def unfused_mul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a * b`` rounded to float32 before any later add: XLA contracts ``a·b + c`` into an FMA, torch (one
    kernel per op) does not; unbarriered, the samples drift from diffusers' by ~1 ulp per step."""
    return jax.lax.optimization_barrier(a * b)


def true_div(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a / b`` for a scalar ``b`` as an elementwise division: XLA rewrites ``a / broadcast(b)`` into
    ``a · (1/b)``, 1 ulp off torch's true division in ~7% of elements; a barrier keeps the broadcast."""
    return a / jax.lax.optimization_barrier(jnp.broadcast_to(b, jnp.shape(a)))


def check_num_steps(owner: str, num_steps: Any) -> int:
    """Return ``num_steps`` as an int ≥ 1, or raise naming the rule and the value."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise ValueError(f"{owner}.set_timesteps: num_steps must be an int >= 1; got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"{owner}.set_timesteps: num_steps must be an int >= 1; got {num_steps}")
    return int(num_steps)


def check_choice(owner: str, field: str, value: Any, allowed: tuple, why: str = "") -> None:
    """Raise unless ``value`` is one of ``allowed`` (``why``: what the other values would need)."""
    if isinstance(value, bool) != isinstance(allowed[0], bool) or value not in allowed:
        expected = repr(allowed[0]) if len(allowed) == 1 else f"one of {allowed}"
        raise ValueError(f"{owner}.{field} must be {expected}; got {value!r}{why}")


def check_int(owner: str, field: str, value: Any, lo: int, hi: int | None = None) -> None:
    """Raise unless ``value`` is an int in ``[lo, hi]``."""
    bad = isinstance(value, bool) or not isinstance(value, numbers.Integral)
    if bad or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{owner}.{field} must be an int {bound}; got {value!r}")


def check_positive(owner: str, field: str, value: Any) -> None:
    """Raise unless ``value`` is a finite real number > 0."""
    bad = isinstance(value, bool) or not isinstance(value, numbers.Real)
    if bad or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}.{field} must be a finite number > 0; got {value!r}")
