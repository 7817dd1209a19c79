"""Model families the converter knows: what differs between Wan 2.1 and HunyuanVideo, in one record each.

A :class:`ModelFamily` ties a diffusers ``_class_name`` to its config and model classes, its presets, its
key rules, its stacked block groups and how to tell its checkpoint formats apart. The planner, the writer
and :func:`svg_jax.load` take everything model-specific from it.
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from flax import nnx

from svg_jax.models import (
    HUNYUAN_PRESETS,
    WAN_PRESETS,
    HunyuanVideoConfig,
    HunyuanVideoTransformer3DModel,
    WanConfig,
    WanTransformer3DModel,
)

from . import hunyuan_rules, rules
from .errors import ConversionError
from .params import Stack
from .rules import Mapped, Rule

ModelConfig = WanConfig | HunyuanVideoConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelFamily:
    """Everything the converter and loader need to know about one diffusers transformer class."""

    name: str  # for messages, e.g. "Wan 2.1"
    class_name: str  # diffusers config.json "_class_name"
    config_cls: type
    model_cls: type
    presets: Mapping[str, Any]  # --model name → config
    diffusers_rules: tuple[Rule, ...]  # diffusers key → NNX path
    stacks: tuple[Stack, ...]  # stacked block groups (leading layer axis)
    diffusers_markers: tuple[str, ...]  # key prefixes only the diffusers format has
    original_markers: tuple[str, ...]  # key prefixes only the original release has
    original_rules: tuple[Rule, ...] | None = None  # original → diffusers names; None: not supported
    ignored_keys: tuple[str, ...] = ()  # diffusers keys diffusers itself drops on load (full-match regexes)

    def map_key(self, key: str) -> Mapped | None:
        """Where a diffusers key goes in the NNX model, or None when no rule knows it."""
        return rules.map_key(self.diffusers_rules, key)

    def is_ignored(self, key: str) -> bool:
        """Whether diffusers itself drops this key on load."""
        return any(re.fullmatch(p, key) for p in self.ignored_keys)

    def expected_key(self, target: str, layer: int | None) -> str:
        """The diffusers key that fills ``target`` (at ``layer``): names missing tensors."""
        return rules.diffusers_key_of(target, layer, self.stacks)

    def original_to_diffusers(self, key: str) -> str | None:
        """The diffusers name of an original-release key, or None when no rule knows it."""
        self.check_original_supported()
        hit = rules.match_rule(self.original_rules, key)
        return None if hit is None else hit[1]

    def check_original_supported(self) -> None:
        """Raise :class:`ConversionError` when this family has no original-format rules."""
        if self.original_rules is None:
            raise ConversionError(
                [
                    f"original format not supported for {self.name} yet; convert the diffusers format "
                    f"(a save_pretrained folder with config.json, _class_name {self.class_name!r})"
                ]
            )

    def build(self, config: ModelConfig, *, dtype: Any, param_dtype: Any) -> nnx.Module:
        """The abstract model (shapes and dtypes only, no memory) for ``config``."""
        return nnx.eval_shape(
            lambda: self.model_cls(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
        )


WAN = ModelFamily(
    name="Wan 2.1",
    class_name="WanTransformer3DModel",
    config_cls=WanConfig,
    model_cls=WanTransformer3DModel,
    presets=WAN_PRESETS,
    diffusers_rules=rules.DIFFUSERS_RULES,
    stacks=rules.WAN_STACKS,
    diffusers_markers=("condition_embedder.", "proj_out."),
    original_markers=("time_embedding.", "head."),
    original_rules=rules.ORIGINAL_RULES,
    ignored_keys=rules.IGNORED_DIFFUSERS_KEYS,
)

HUNYUAN_VIDEO = ModelFamily(
    name="HunyuanVideo",
    class_name="HunyuanVideoTransformer3DModel",
    config_cls=HunyuanVideoConfig,
    model_cls=HunyuanVideoTransformer3DModel,
    presets=HUNYUAN_PRESETS,
    diffusers_rules=hunyuan_rules.HUNYUAN_DIFFUSERS_RULES,
    stacks=hunyuan_rules.STACKS,
    diffusers_markers=hunyuan_rules.DIFFUSERS_MARKERS,
    original_markers=hunyuan_rules.ORIGINAL_MARKERS,
)

FAMILIES: tuple[ModelFamily, ...] = (WAN, HUNYUAN_VIDEO)
CLASS_NAMES: tuple[str, ...] = tuple(f.class_name for f in FAMILIES)
PRESET_NAMES: tuple[str, ...] = tuple(sorted(name for f in FAMILIES for name in f.presets))


def family_for_class(class_name: Any, *, where: str = "config.json") -> ModelFamily:
    """The family of a diffusers ``_class_name``; ValueError naming the known ones otherwise."""
    for family in FAMILIES:
        if family.class_name == class_name:
            return family
    raise ValueError(f"{where}: _class_name must be one of {list(CLASS_NAMES)}; got {class_name!r}")


def family_for_preset(preset: str) -> ModelFamily:
    """The family whose presets include ``preset``; ConversionError listing every preset otherwise."""
    for family in FAMILIES:
        if preset in family.presets:
            return family
    raise ConversionError([f"--model must be one of {list(PRESET_NAMES)}; got {preset!r}"])


def family_for_config(config: ModelConfig) -> ModelFamily:
    """The family of an architecture config instance."""
    for family in FAMILIES:
        if isinstance(config, family.config_cls):
            return family
    raise TypeError(f"config must be one of {[f.config_cls.__name__ for f in FAMILIES]}; got {type(config)}")
