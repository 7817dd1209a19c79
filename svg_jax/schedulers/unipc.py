"""UniPC multistep scheduler for flow prediction, as Wan ships it (diffusers ``UniPCMultistepScheduler``).

UniPC (arXiv 2302.04867) runs, at step ``i``, the corrector UniC on the sample the previous predictor
produced (using this step's model output) and then the predictor UniP from the corrected sample. With flow
sigmas ``α = 1 − σ``, ``λ = log α − log σ`` and the model output is converted to ``x0 = x − σ·v``.

Every scalar of a step depends only on the step index: the order (warm-up ``min(i, p) + 1``, and with
``lower_order_final`` at most ``S − i``), the ``λ`` differences ``h`` and ratios ``r_k``, the B(h)
coefficients and the ``ρ`` solved from them. ``set_timesteps`` therefore precomputes them on the host into
per-step tables, mirroring diffusers' float32 torch scalar arithmetic op by op (the 2×2 / 3×3 ``ρ`` systems
are solved in float32 as ``torch.linalg.solve`` does), and the traced ``step`` only gathers row ``i`` and
combines the model-output history with the tensor ops in diffusers' order. History slots an order does not
use get ``ρ = 0, r = 1`` so a fixed-shape state serves every step.

Configurations for which diffusers 0.42.1 returns NaN are refused: ``bh1`` with a zero final sigma
(``B(h) = h = −∞`` times a zero residual) and a last step of order > 1 into ``σ = 0`` (``r_k = 0``) or of
order 3 into a repeated ``sigma_min`` (singular ``ρ`` system).
"""

import dataclasses
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .base import check_choice, check_int, check_num_steps, check_positive, true_div, unfused_mul

_NAME = "UniPCMultistepScheduler"
_F32 = np.float32


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class UniPCSchedule:
    """Timesteps, sigmas and the per-step UniP / UniC coefficients of one generation (float32).

    ``K = solver_order − 1`` history differences. Predictor at step ``i`` (from ``σ_i`` to ``σ_{i+1}``)::

        x' = (p_sample·x − p_m0·m0) − p_res·Σ_k p_rho[k]·(m_k − m0) / p_rk[k]

    Corrector at step ``i > 0`` (where ``c_on``; re-solves ``σ_{i−1} → σ_i`` from the previous sample)::

        x = (c_sample·x_prev − c_m0·m0) − c_res·(Σ_k c_rho[k]·(m_k − m0) / c_rk[k] + c_rho_t·(m_t − m0))
    """

    timesteps: jax.Array  # [S], integer-valued: what the transformer sees
    sigmas: jax.Array  # [S + 1]: shifted flow sigmas, then the final sigma
    p_sample: jax.Array  # [S]: σ_t / σ_s0
    p_m0: jax.Array  # [S]: α_t·(e^{−h} − 1)
    p_res: jax.Array  # [S]: α_t·B(h)
    p_rk: jax.Array  # [S, K]: (λ_{s_k} − λ_s0) / h, 1 where unused
    p_rho: jax.Array  # [S, K]: ρ of UniP, 0 where unused
    c_on: jax.Array  # [S] bool: the corrector runs at this step
    c_sample: jax.Array  # [S]
    c_m0: jax.Array  # [S]
    c_res: jax.Array  # [S]
    c_rk: jax.Array  # [S, K]
    c_rho: jax.Array  # [S, K]
    c_rho_t: jax.Array  # [S]: ρ of the current model output
    num_steps: int = dataclasses.field(metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class UniPCState:
    """Multistep state; fixed shapes, zeros before the first step."""

    model_outputs: jax.Array  # float32 [solver_order, *shape]: converted outputs (x0), newest last
    last_sample: jax.Array  # float32 [*shape]: the sample the last predictor started from


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniPCMultistepScheduler:
    """UniPC-p with B(h) = bh1/bh2 on shifted flow sigmas (Wan: ``flow_shift`` 3.0 at 480p, 5.0 at 720p).

    Field names are diffusers' config keys; defaults are Wan's ``scheduler_config.json``. Only
    ``prediction_type="flow_prediction"`` with ``use_flow_sigmas=True`` and ``predict_x0=True`` is ported
    (no thresholding, Karras/exponential/beta sigmas, dynamic shifting or ``solver_p``).
    ``disable_corrector``: steps ``j`` whose following corrector (at step ``j + 1``) is skipped.
    """

    num_train_timesteps: int = 1000
    solver_order: int = 2
    prediction_type: str = "flow_prediction"
    predict_x0: bool = True
    solver_type: str = "bh2"
    lower_order_final: bool = True
    disable_corrector: Sequence[int] = ()  # stored as a tuple (hashable); diffusers' JSON has a list
    use_flow_sigmas: bool = True
    flow_shift: float = 3.0
    final_sigmas_type: str = "zero"

    def __post_init__(self):
        check_int(_NAME, "num_train_timesteps", self.num_train_timesteps, 1)
        check_int(_NAME, "solver_order", self.solver_order, 1, 3)
        check_choice(_NAME, "prediction_type", self.prediction_type, ("flow_prediction",))
        check_choice(_NAME, "predict_x0", self.predict_x0, (True,), " (flow prediction converts to x0)")
        check_choice(_NAME, "solver_type", self.solver_type, ("bh1", "bh2"))
        check_choice(_NAME, "lower_order_final", self.lower_order_final, (True, False))
        check_choice(_NAME, "use_flow_sigmas", self.use_flow_sigmas, (True,))
        check_positive(_NAME, "flow_shift", self.flow_shift)
        check_choice(_NAME, "final_sigmas_type", self.final_sigmas_type, ("zero", "sigma_min"))
        steps = self.disable_corrector
        if not isinstance(steps, tuple | list) or not all(
            isinstance(j, numbers.Integral) and not isinstance(j, bool) and j >= 0 for j in steps
        ):
            raise ValueError(f"{_NAME}.disable_corrector must be a tuple of step indices >= 0; got {steps!r}")
        object.__setattr__(self, "disable_corrector", tuple(int(j) for j in steps))  # hashable
        if self.solver_type == "bh1" and self.final_sigmas_type == "zero":
            raise ValueError(
                f"{_NAME}.solver_type must be 'bh2' when final_sigmas_type='zero'; got 'bh1' "
                "(diffusers returns NaN at the last step: B(h) = h = -inf there)"
            )
        last_order = 1 if self.lower_order_final else self.solver_order
        max_last_order = 1 if self.final_sigmas_type == "zero" else 2
        if last_order > max_last_order:
            raise ValueError(
                f"{_NAME}.lower_order_final must be True for solver_order={self.solver_order} with "
                f"final_sigmas_type={self.final_sigmas_type!r}; got False (diffusers returns NaN or fails "
                f"at the last step, whose order must be <= {max_last_order})"
            )

    def _orders(self, n: int) -> list[int]:
        """diffusers' ``this_order`` at each step: warm-up, then at most ``n − i`` with lower_order_final."""
        p = self.solver_order
        return [min(min(p, n - i) if self.lower_order_final else p, min(i, p) + 1) for i in range(n)]

    def set_timesteps(self, num_steps: int | np.integer) -> UniPCSchedule:
        """Flow sigmas, timesteps and the coefficient tables for ``num_steps`` steps (host side).

        Steps always start at index 0. (For ``num_steps`` large enough that the first two int timesteps
        are both 999, e.g. ≥ 334 at shift 3, diffusers' ``index_for_timestep`` starts at index 1 and
        fails at the end; that is not reproduced.)
        """
        n = check_num_steps(_NAME, num_steps)
        shift = float(self.flow_shift)
        sigmas = np.linspace(1, 1 / self.num_train_timesteps, n + 1)[:-1]  # float64, as diffusers
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        if np.fabs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6  # diffusers: keeps log(α) finite at the first step
        timesteps = (sigmas * self.num_train_timesteps).astype(np.int64)  # torch .to(int64) truncates
        last = 0.0 if self.final_sigmas_type == "zero" else sigmas[-1]
        sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)

        k = self.solver_order - 1
        orders = self._orders(n)
        tab = {name: np.zeros(n, _F32) for name in ("p_sample", "p_m0", "p_res", "c_m0", "c_res", "c_rho_t")}
        tab["c_sample"] = np.ones(n, _F32)
        for name, fill in (("p_rk", 1), ("p_rho", 0), ("c_rk", 1), ("c_rho", 0)):
            tab[name] = np.full((n, k), fill, _F32)
        c_on = np.zeros(n, bool)
        for i in range(n):
            # UniP: σ_i → σ_{i+1} with history σ_{i−1}, σ_{i−2}, …
            coef = _bh_coefficients(sigmas, i + 1, i, orders[i], self.solver_type, corrector=False)
            tab["p_sample"][i], tab["p_m0"][i], tab["p_res"][i], rks, rhos = coef
            tab["p_rk"][i, : len(rks)], tab["p_rho"][i, : len(rhos)] = rks, rhos
            # UniC at step i re-solves σ_{i−1} → σ_i with the previous step's order.
            if i == 0 or (i - 1) in self.disable_corrector:
                continue
            coef = _bh_coefficients(sigmas, i, i - 1, orders[i - 1], self.solver_type, corrector=True)
            tab["c_sample"][i], tab["c_m0"][i], tab["c_res"][i], rks, rhos = coef
            tab["c_rk"][i, : len(rks)], tab["c_rho"][i, : len(rks)] = rks, rhos[:-1]
            tab["c_rho_t"][i] = rhos[-1]
            c_on[i] = True
        return UniPCSchedule(
            timesteps=jnp.asarray(timesteps.astype(np.float32)),
            sigmas=jnp.asarray(sigmas),
            c_on=jnp.asarray(c_on),
            num_steps=n,
            **{name: jnp.asarray(value) for name, value in tab.items()},
        )

    def init_state(self, schedule: UniPCSchedule, sample: jax.Array) -> UniPCState:
        """Zeroed history of ``solver_order`` converted outputs and the last sample (float32)."""
        del schedule
        shape = jnp.shape(sample)
        return UniPCState(
            model_outputs=jnp.zeros((self.solver_order, *shape), jnp.float32),
            last_sample=jnp.zeros(shape, jnp.float32),
        )

    def step(
        self,
        schedule: UniPCSchedule,
        state: UniPCState,
        i: jax.Array | int,
        model_output: jax.Array,
        sample: jax.Array,
    ) -> tuple[jax.Array, UniPCState]:
        """Corrector (from step 1 on) then predictor at step ``i`` in float32 (``i`` may be traced)."""
        v = jnp.asarray(model_output).astype(jnp.float32)
        x = jnp.asarray(sample).astype(jnp.float32)
        i = jnp.asarray(i, jnp.int32)
        s = jax.tree.map(lambda a: a[i], schedule)  # this step's row of every table

        m_t = x - unfused_mul(s.sigmas, v)  # flow prediction → x0 (s.sigmas is σ_i here)
        hist = state.model_outputs  # [p, *shape], newest last

        # UniC: correct x (the previous predictor's output) with this step's model output.
        m0 = hist[-1]
        res = _history_residual(hist, s.c_rk, s.c_rho) + unfused_mul(s.c_rho_t, m_t - m0)
        x_c = unfused_mul(s.c_sample, state.last_sample) - unfused_mul(s.c_m0, m0)
        x_c = x_c - unfused_mul(s.c_res, res)
        x = jnp.where(s.c_on, x_c, x)

        # UniP from the corrected sample, with m_t pushed onto the history.
        hist = jnp.concatenate([hist[1:], m_t[None]])
        res = _history_residual(hist, s.p_rk, s.p_rho)
        prev = (unfused_mul(s.p_sample, x) - unfused_mul(s.p_m0, m_t)) - unfused_mul(s.p_res, res)
        return prev, UniPCState(model_outputs=hist, last_sample=x)


def _history_residual(hist: jax.Array, rk: jax.Array, rho: jax.Array) -> jax.Array:
    """``Σ_k ρ_k·(m_k − m0)/r_k`` over the K older outputs ``m_k = hist[−k−1]`` (``m0 = hist[−1]``)."""
    m0 = hist[-1]
    terms = [unfused_mul(rho[j], true_div(hist[-j - 2] - m0, rk[j])) for j in range(rk.shape[0])]
    return sum(terms[1:], terms[0]) if terms else jnp.zeros_like(m0)


def _log(x: np.float32) -> np.float32:
    """Correctly rounded float32 log. torch's CPU log (MKL VML) is 1 ulp off this for ~6% of inputs,
    which is the only remaining difference from diffusers' tables (see tests/test_schedulers.py)."""
    return _F32(np.log(np.float64(x)))


def _expm1(x: np.float32) -> np.float32:
    """Correctly rounded float32 expm1 (matched torch on every value the goldens use)."""
    return _F32(np.expm1(np.float64(x)))


def _int_pow(x: np.float32, e: int) -> np.float32:
    """``x**e`` in float32 for the ``e <= 2`` that ``solver_order <= 3`` needs (one rounding, as torch)."""
    assert 0 <= e <= 2, e
    return (_F32(1), x, x * x)[e]


def _lu_solve(a: np.ndarray, b: np.ndarray) -> list[np.float32]:
    """Solve the ≤ 3×3 ρ system in float32 as torch's CPU ``linalg.solve`` (MKL getrf/getrs) does.

    Partial pivoting; the pivot column is scaled by the pivot's reciprocal; no FMA; the substitutions
    subtract one dot product per row and multiply by the diagonal's reciprocal. This matches torch bit for
    bit on the 2×2 systems (checked on 4000 random UniPC-shaped systems); on 3×3 systems ~10% of results
    still differ by an ulp (MKL's kernel order is not documented).
    """
    a = [[_F32(v) for v in row] for row in a]
    b = [_F32(v) for v in b]
    n = len(b)
    for k in range(n):
        p = max(range(k, n), key=lambda r: abs(a[r][k]))
        a[k], a[p], b[k], b[p] = a[p], a[k], b[p], b[k]
        inv = _F32(1) / a[k][k]
        for r in range(k + 1, n):
            a[r][k] = a[r][k] * inv
            for c in range(k + 1, n):
                a[r][c] = a[r][c] - a[r][k] * a[k][c]
    y = []
    for r in range(n):  # L (unit diagonal)
        y.append(b[r] - _dot(a[r][:r], y))
    x = [_F32(0)] * n
    for r in reversed(range(n)):  # U
        x[r] = (y[r] - _dot(a[r][r + 1 :], x[r + 1 :])) * (_F32(1) / a[r][r])
    return x


def _dot(u: list[np.float32], v: list[np.float32]) -> np.float32:
    """Float32 dot product, left to right (0 when empty)."""
    total = _F32(0)
    for j, (p, q) in enumerate(zip(u, v, strict=True)):
        total = p * q if j == 0 else total + p * q
    return total


def _bh_coefficients(
    sigmas: np.ndarray, t: int, s0: int, order: int, solver_type: str, *, corrector: bool
) -> tuple[np.float32, np.float32, np.float32, list[np.float32], list[np.float32]]:
    """Scalars of one UniP (or UniC) update from ``σ_s0`` to ``σ_t`` in float32, as diffusers computes them.

    Returns ``(σ_t/σ_s0, α_t·hφ1, α_t·B(h), r_k for k < order, ρ)``; UniP's ρ has ``order − 1`` entries,
    UniC's ``order`` (the last weighs the current model output).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sig = [_F32(s) for s in sigmas]
        one = _F32(1)
        lam = lambda j: _log(one - sig[j]) - _log(sig[j])
        lambda_s0 = lam(s0)
        h = lam(t) - lambda_s0
        rks = [(lam(s0 - k) - lambda_s0) / h for k in range(1, order)]
        hh = -h  # predict_x0
        h_phi_1 = _expm1(hh)
        h_phi_k = h_phi_1 / hh - one
        b_h = hh if solver_type == "bh1" else _expm1(hh)
        rows, b, factorial = [], [], 1
        for j in range(1, order + 1):
            rows.append([_int_pow(r, j - 1) for r in [*rks, one]])  # torch.pow(rks, j - 1)
            b.append(h_phi_k * _F32(factorial) / b_h)
            factorial *= j + 1
            h_phi_k = h_phi_k / hh - _F32(1 / factorial)
        r_mat, b = np.array(rows, _F32), np.array(b, _F32)
        # diffusers shortcuts UniC-1 and UniP-2 with ρ = 0.5 instead of solving.
        if corrector:
            rhos = [_F32(0.5)] if order == 1 else _lu_solve(r_mat, b)
        elif order == 1:
            rhos = []
        elif order == 2:
            rhos = [_F32(0.5)]
        else:
            rhos = _lu_solve(r_mat[:-1, :-1], b[:-1])
        alpha_t = one - sig[t]
        return sig[t] / sig[s0], alpha_t * h_phi_1, alpha_t * b_h, rks, rhos
