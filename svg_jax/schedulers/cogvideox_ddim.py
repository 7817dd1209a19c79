"""DDIM with an SNR-shifted, zero-terminal-SNR schedule (diffusers ``CogVideoXDDIMScheduler``), eta = 0.

diffusers builds ``alphas_cumprod`` in float64 (scaled-linear betas), shifts the SNR with
``ᾱ ← ᾱ / (s + (1 − s)·ᾱ)``, then rescales ``√ᾱ`` so that ``ᾱ_999 = 0``. Each step's scalars are float64
0-d tensors, which torch rounds to float32 when it multiplies them into the float32 sample; we therefore
precompute them in float64 on the host and store them as float32 tables, and the device step is four
float32 multiply-adds in diffusers' order:

    x0   = √ᾱ_t·x − √(1 − ᾱ_t)·v                          (v-prediction)
    x'   = a_t·x + b_t·x0,   a_t = √((1 − ᾱ_prev) / (1 − ᾱ_t)),   b_t = √ᾱ_prev − √ᾱ_t·a_t

Quirks reproduced: ``prev = t − num_train_timesteps // n`` (not the next timestep, so for n ∤ 1000 the
step lands between schedule points and the last step of e.g. n = 13 ends at ᾱ_0, not at 1); the step
ignores ``eta`` (no noise is ever added) and ``clip_sample``. (The pipeline, not the scheduler, casts the
latents to the text-embedding dtype after every step; that belongs to the sampling loop.)
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .base import NoState, Stateless, check_choice, check_int, check_num_steps, check_positive, unfused_mul

_NAME = "CogVideoXDDIMScheduler"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CogVideoXDDIMSchedule:
    """Timesteps and the per-step DDIM coefficients of one generation (float32)."""

    timesteps: jax.Array  # [S], integer-valued: what the transformer sees
    alphas_cumprod: jax.Array  # [num_train_timesteps]: ᾱ after the SNR shift and zero-SNR rescale
    sqrt_alpha_prod: jax.Array  # [S]: √ᾱ_t
    sqrt_beta_prod: jax.Array  # [S]: √(1 − ᾱ_t)
    a_t: jax.Array  # [S]: weight of the current sample
    b_t: jax.Array  # [S]: weight of the predicted x0
    num_steps: int = dataclasses.field(metadata=dict(static=True))


@dataclasses.dataclass(frozen=True, kw_only=True)
class CogVideoXDDIMScheduler(Stateless):
    """Deterministic DDIM for CogVideoX (v-prediction, trailing spacing).

    Field names are diffusers' config keys; defaults are CogVideoX-2B's (``snr_shift_scale=1.0`` for 5B
    and 1.5). ``steps_offset`` is accepted and, as in diffusers, unused by trailing spacing.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "v_prediction"
    rescale_betas_zero_snr: bool = True
    set_alpha_to_one: bool = True
    timestep_spacing: str = "trailing"
    snr_shift_scale: float = 3.0
    steps_offset: int = 0
    clip_sample: bool = False

    def __post_init__(self):
        check_int(_NAME, "num_train_timesteps", self.num_train_timesteps, 2)
        for field in ("beta_start", "beta_end"):
            check_positive(_NAME, field, getattr(self, field))
            if getattr(self, field) >= 1:
                raise ValueError(f"{_NAME}.{field} must be < 1; got {getattr(self, field)!r}")
        check_choice(_NAME, "beta_schedule", self.beta_schedule, ("scaled_linear",))
        check_choice(_NAME, "prediction_type", self.prediction_type, ("v_prediction",))
        check_choice(_NAME, "rescale_betas_zero_snr", self.rescale_betas_zero_snr, (True, False))
        check_choice(_NAME, "set_alpha_to_one", self.set_alpha_to_one, (True, False))
        check_choice(_NAME, "timestep_spacing", self.timestep_spacing, ("trailing",))
        check_positive(_NAME, "snr_shift_scale", self.snr_shift_scale)
        check_int(_NAME, "steps_offset", self.steps_offset, 0)
        check_choice(
            _NAME, "clip_sample", self.clip_sample, (False,), " (diffusers' CogVideoX DDIM step never clips)"
        )

    def _alphas_cumprod(self) -> np.ndarray:
        """ᾱ as diffusers computes it at construction (float64 ``[num_train_timesteps]``)."""
        t = self.num_train_timesteps
        betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, t, dtype=np.float64) ** 2
        ac = np.cumprod(1.0 - betas)
        s = float(self.snr_shift_scale)
        ac = ac / (s + (1 - s) * ac)
        if self.rescale_betas_zero_snr:  # arXiv 2305.08891 Algorithm 1, on √ᾱ
            root = np.sqrt(ac)
            root_0, root_t = root[0], root[-1]
            root = (root - root_t) * (root_0 / (root_0 - root_t))
            ac = root**2
        return ac

    def set_timesteps(self, num_steps: int | np.integer) -> CogVideoXDDIMSchedule:
        """Trailing timesteps and the DDIM coefficients for ``num_inference_steps=num_steps`` (host side)."""
        n = check_num_steps(_NAME, num_steps)
        t_train = self.num_train_timesteps
        if n > t_train:
            raise ValueError(f"{_NAME}.set_timesteps: num_steps must be <= {t_train=}; got {n}")
        timesteps = np.round(np.arange(t_train, 0, -t_train / n)).astype(np.int64) - 1
        if len(timesteps) != n:
            # np.arange's float step can give one element too many; diffusers then runs n + 1 steps,
            # the last at timestep −1 (ᾱ[−1]). Refuse instead of reproducing that.
            raise ValueError(
                f"{_NAME}.set_timesteps: diffusers' trailing spacing yields {len(timesteps)} timesteps "
                f"(ending at {timesteps[-1]}) for num_steps={n}; choose a nearby num_steps"
            )
        ac = self._alphas_cumprod()
        final = 1.0 if self.set_alpha_to_one else ac[0]
        prev = timesteps - t_train // n
        ab_t = ac[timesteps]
        ab_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final)
        a_t = np.sqrt((1 - ab_prev) / (1 - ab_t))
        b_t = np.sqrt(ab_prev) - np.sqrt(ab_t) * a_t
        f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))  # torch's float64-scalar → float32 cast
        return CogVideoXDDIMSchedule(
            timesteps=f32(timesteps),
            alphas_cumprod=f32(ac),
            sqrt_alpha_prod=f32(np.sqrt(ab_t)),
            sqrt_beta_prod=f32(np.sqrt(1 - ab_t)),
            a_t=f32(a_t),
            b_t=f32(b_t),
            num_steps=n,
        )

    def step(
        self,
        schedule: CogVideoXDDIMSchedule,
        state: NoState,
        i: jax.Array | int,
        model_output: jax.Array,
        sample: jax.Array,
    ) -> tuple[jax.Array, NoState]:
        """One deterministic DDIM step from ``timesteps[i]`` in float32 (``i`` may be traced)."""
        i, v, x = self.float32_inputs(i, model_output, sample)
        x0 = unfused_mul(schedule.sqrt_alpha_prod[i], x) - unfused_mul(schedule.sqrt_beta_prod[i], v)
        return unfused_mul(schedule.a_t[i], x) + unfused_mul(schedule.b_t[i], x0), state
