"""Checkpoint conversion (Wan 2.1 diffusers / original, HunyuanVideo diffusers safetensors → orbax) and the
converted format."""

from .api import DTYPES, ConversionResult, convert_checkpoint, resolve_config, target_shapes
from .checkpoint import CheckpointWriter, read_config, read_params
from .errors import ConversionError
from .families import (
    FAMILIES,
    HUNYUAN_VIDEO,
    PRESET_NAMES,
    WAN,
    ModelFamily,
    family_for_class,
    family_for_config,
    family_for_preset,
)
from .plan import LeafPlan, detect_format, plan_conversion
from .rules import DIFFUSERS_RULES, ORIGINAL_RULES, map_diffusers_key, original_to_diffusers
from .source import SourceCheckpoint, open_source

__all__ = [
    "DIFFUSERS_RULES",
    "DTYPES",
    "FAMILIES",
    "HUNYUAN_VIDEO",
    "ORIGINAL_RULES",
    "PRESET_NAMES",
    "WAN",
    "CheckpointWriter",
    "ConversionError",
    "ConversionResult",
    "LeafPlan",
    "ModelFamily",
    "SourceCheckpoint",
    "convert_checkpoint",
    "detect_format",
    "family_for_class",
    "family_for_config",
    "family_for_preset",
    "map_diffusers_key",
    "open_source",
    "original_to_diffusers",
    "plan_conversion",
    "read_config",
    "read_params",
    "resolve_config",
    "target_shapes",
]
