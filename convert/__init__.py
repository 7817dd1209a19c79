"""Checkpoint conversion (diffusers / original Wan 2.1 safetensors → orbax) and the converted format."""

from .api import DTYPES, ConversionResult, convert_checkpoint, resolve_config, target_shapes
from .checkpoint import CheckpointWriter, read_config, read_params
from .errors import ConversionError
from .plan import LeafPlan, detect_format, plan_conversion
from .rules import DIFFUSERS_RULES, ORIGINAL_RULES, map_diffusers_key, original_to_diffusers
from .source import SourceCheckpoint, open_source

__all__ = [
    "DIFFUSERS_RULES",
    "DTYPES",
    "ORIGINAL_RULES",
    "CheckpointWriter",
    "ConversionError",
    "ConversionResult",
    "LeafPlan",
    "SourceCheckpoint",
    "convert_checkpoint",
    "detect_format",
    "map_diffusers_key",
    "open_source",
    "original_to_diffusers",
    "plan_conversion",
    "read_config",
    "read_params",
    "resolve_config",
    "target_shapes",
]
