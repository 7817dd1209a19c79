"""Official generation settings per model and resolution: size, steps, guidance, scheduler, SVG1/SVG2.

A :class:`GenerationPreset` bundles what ``svg-jax generate --preset NAME`` fills in; any of it can be
overridden on the command line. The SVG dense warm-up is stored as the official *fraction* of the steps
(``first_times_fp``) so that a different ``--steps`` keeps the official proportion:
``dense_steps = floor(fraction · steps)`` (svg_methods.md §1.1).

Sources: ``video_dits.md`` §0/§4 (sizes, steps, guidance, UniPC ``flow_shift``: 5.0 except I2V at 480p,
3.0, as in the original Wan CLI) and ``svg_methods.md`` §1.4/§2.4 (the ``*_svg.sh`` / ``*_sap.sh`` scripts).
"""

import dataclasses
import math

from svg_jax import svg1, svg2
from svg_jax.attention import AttentionConfig, Method
from svg_jax.svg1 import SVG1Config
from svg_jax.svg2 import SVG2Config


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationPreset:
    """One model × resolution: what the official scripts run."""

    model: str  # the svg_jax.models.WAN_PRESETS architecture the checkpoint must match
    height: int
    width: int
    frames: int
    steps: int
    guidance_scale: float
    flow_shift: float  # UniPCMultistepScheduler(flow_shift=...)
    dense_step_fraction: float  # first_times_fp: leading fraction of the steps run dense
    svg1: SVG1Config
    svg2: SVG2Config


def dense_steps_for(fraction: float, steps: int) -> int:
    """The official conversion of ``first_times_fp`` into a count of dense steps."""
    return math.floor(fraction * steps)


def attention_config(
    method: Method,
    *,
    svg1_config: SVG1Config,
    svg2_config: SVG2Config,
    dense_steps: int | None = None,
    dense_layers: int | None = None,
) -> AttentionConfig:
    """An :class:`AttentionConfig` for ``method`` with the warm-up counts replaced where given."""
    changes = {
        k: v for k, v in (("dense_steps", dense_steps), ("dense_layers", dense_layers)) if v is not None
    }
    if method == "svg1":
        return AttentionConfig(method="svg1", svg1=dataclasses.replace(svg1_config, **changes))
    if method == "svg2":
        return AttentionConfig(method="svg2", svg2=dataclasses.replace(svg2_config, **changes))
    if method == "dense":
        return AttentionConfig(method="dense")
    raise ValueError(f"attention method must be 'dense', 'svg1' or 'svg2'; got {method!r}")


_T2V_720P = dict(model="wan2.1-t2v-14b", height=720, width=1280, frames=81, steps=50, guidance_scale=5.0)
_T2V_480P = dict(_T2V_720P, height=480, width=832)

PRESETS: dict[str, GenerationPreset] = {
    "wan2.1-t2v-14b-720p": GenerationPreset(
        **_T2V_720P,
        flow_shift=5.0,
        dense_step_fraction=0.2,
        svg1=svg1.WAN21_T2V_720P,
        svg2=svg2.WAN21_T2V_720P,
    ),
    # No official 480p T2V script: the 720p schedule, and SVG2's 480p cluster counts (svg2.WAN21_T2V_480P).
    "wan2.1-t2v-14b-480p": GenerationPreset(
        **_T2V_480P,
        flow_shift=5.0,
        dense_step_fraction=0.2,
        svg1=svg1.WAN21_T2V_720P,
        svg2=svg2.WAN21_T2V_480P,
    ),
    "wan2.1-t2v-1.3b-480p": GenerationPreset(
        **dict(_T2V_480P, model="wan2.1-t2v-1.3b"),
        flow_shift=5.0,
        dense_step_fraction=0.2,
        svg1=svg1.WAN21_T2V_720P,
        svg2=svg2.WAN21_T2V_480P,
    ),
    "wan2.1-i2v-14b-720p": GenerationPreset(
        **dict(_T2V_720P, model="wan2.1-i2v-14b-720p", steps=40),
        flow_shift=5.0,
        dense_step_fraction=0.35,
        svg1=svg1.WAN21_I2V_720P,
        svg2=svg2.WAN21_I2V_720P,
    ),
    "wan2.1-i2v-14b-480p": GenerationPreset(
        **dict(_T2V_480P, model="wan2.1-i2v-14b-480p", steps=40),
        flow_shift=3.0,
        dense_step_fraction=0.2,
        svg1=svg1.WAN21_I2V_480P,
        svg2=svg2.WAN21_I2V_480P,
    ),
}

# Without --preset: the Wan T2V 720p method settings (cluster counts may need lowering for small videos).
DEFAULT_SVG1 = svg1.WAN21_T2V_720P
DEFAULT_SVG2 = svg2.WAN21_T2V_720P
DEFAULT_DENSE_STEP_FRACTION = 0.2
DEFAULT_FLOW_SHIFT = 5.0
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.0
