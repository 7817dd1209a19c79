"""diffusers ``config.json`` I/O shared by the model configs: known-key parsing, the dict diffusers writes,
and named-preset lookup."""

import dataclasses
from collections.abc import Mapping
from typing import Any


def config_args(cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of the config dataclass ``cls`` in a diffusers ``config.json`` dict:
    metadata keys (``_...``) are dropped, a key ``cls`` does not know raises, and a missing or null
    ``out_channels`` becomes ``in_channels`` (diffusers' ``out_channels or in_channels``). List values of
    tuple fields are left to the caller."""
    fields = {f.name for f in dataclasses.fields(cls)}
    args = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise ValueError(
            f"config.json has keys {cls.__name__} does not know: {unknown}; expected a subset of "
            f"{sorted(fields)}"
        )
    if args.get("out_channels") is None and "in_channels" in args:
        args["out_channels"] = args["in_channels"]
    return args


def to_config_dict(config: Any, class_name: str) -> dict[str, Any]:
    """The dict diffusers writes as ``config.json`` for ``config`` (tuples become lists)."""
    out: dict[str, Any] = {"_class_name": class_name}
    for key, value in dataclasses.asdict(config).items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def lookup_preset[T](presets: Mapping[str, T], name: str, family: str) -> T:
    """``presets[name]``, or a ValueError listing the ``family``'s preset names."""
    if name not in presets:
        raise ValueError(f"unknown {family} preset {name!r}; expected one of {sorted(presets)}")
    return presets[name]
