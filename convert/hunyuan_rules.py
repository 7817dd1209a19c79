"""HunyuanVideo diffusers keys → NNX parameter paths (the rule table of the HunyuanVideo model family).

The rules reuse :class:`~.rules.Rule` and the named :data:`~.rules.TRANSFORMS`. The model has three
stacked block groups, each with its own depth: ``transformer_blocks`` (``num_layers``),
``single_transformer_blocks`` (``num_single_layers``) and ``context_embedder.token_refiner.refiner_blocks``
(``num_refiner_layers``); a ``layer`` group in a rule marks a parameter of one of them. Only the diffusers
format is mapped: the original release's names (``double_blocks.N.img_attn_qkv`` ...) fuse q/k/v.
"""

import re

from .params import Stack
from .rules import Mapped, Rule, map_key

# The stacked block groups (a leaf under one carries a leading layer axis).
STACKS: tuple[Stack, ...] = (
    Stack("transformer_blocks", "num_layers"),
    Stack("single_transformer_blocks", "num_single_layers"),
    Stack("context_embedder.token_refiner.refiner_blocks", "num_refiner_layers"),
)

# Key prefixes that only a diffusers-format / original-format HunyuanVideo checkpoint has.
DIFFUSERS_MARKERS: tuple[str, ...] = ("x_embedder.", "time_text_embed.", "context_embedder.")
ORIGINAL_MARKERS: tuple[str, ...] = ("img_in.", "txt_in.", "double_blocks.", "single_blocks.")

_DOUBLE_LINEARS = (
    r"norm1\.linear|norm1_context\.linear|attn\.(?:to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj"
    r"|to_out\.0|to_add_out)|ff\.net\.0\.proj|ff\.net\.2|ff_context\.net\.0\.proj|ff_context\.net\.2"
)
_DOUBLE_NORMS = r"attn\.(?:norm_q|norm_k|norm_added_q|norm_added_k)"
_SINGLE_LINEARS = r"norm\.linear|attn\.(?:to_q|to_k|to_v)|proj_mlp|proj_out"
_REFINER_LINEARS = r"attn\.(?:to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2|norm_out\.linear"
_EMBEDDERS = r"timestep_embedder|guidance_embedder|text_embedder"
_TOP_LINEARS = (
    rf"time_text_embed\.(?:{_EMBEDDERS})\.linear_[12]|context_embedder\.proj_in"
    r"|context_embedder\.time_text_embed\.(?:timestep_embedder|text_embedder)\.linear_[12]"
    r"|norm_out\.linear|proj_out"
)
_REFINER = r"context_embedder\.token_refiner\.refiner_blocks"


def _stack_rules(prefix: str, linears: str, norms: str | None, layer_norms: str | None) -> tuple[Rule, ...]:
    p = re.escape(prefix) if "\\" not in prefix else prefix
    target = prefix.replace("\\", "")
    rules = [
        Rule(rf"{p}\.(?P<layer>\d+)\.(?P<m>{linears})\.weight", target + ".{m}.kernel", "linear_w"),
        Rule(rf"{p}\.(?P<layer>\d+)\.(?P<m>{linears})\.bias", target + ".{m}.bias"),
    ]
    if norms is not None:  # RMSNorm gain
        rules.append(Rule(rf"{p}\.(?P<layer>\d+)\.(?P<m>{norms})\.weight", target + ".{m}.scale"))
    if layer_norms is not None:  # affine LayerNorm
        rules.append(Rule(rf"{p}\.(?P<layer>\d+)\.(?P<m>{layer_norms})\.weight", target + ".{m}.scale"))
        rules.append(Rule(rf"{p}\.(?P<layer>\d+)\.(?P<m>{layer_norms})\.bias", target + ".{m}.bias"))
    return tuple(rules)


# diffusers key → NNX path (the layer index is dropped from block paths: leaves are stacked).
HUNYUAN_DIFFUSERS_RULES: tuple[Rule, ...] = (
    *_stack_rules("transformer_blocks", _DOUBLE_LINEARS, _DOUBLE_NORMS, None),
    *_stack_rules("single_transformer_blocks", _SINGLE_LINEARS, r"attn\.(?:norm_q|norm_k)", None),
    *_stack_rules(_REFINER, _REFINER_LINEARS, None, r"norm[12]"),
    Rule(r"x_embedder\.proj\.weight", "x_embedder.proj.kernel", "conv3d_w"),
    Rule(r"x_embedder\.proj\.bias", "x_embedder.proj.bias"),
    Rule(rf"(?P<m>{_TOP_LINEARS})\.weight", "{m}.kernel", "linear_w"),
    Rule(rf"(?P<m>{_TOP_LINEARS})\.bias", "{m}.bias"),
)


def map_hunyuan_key(key: str) -> Mapped | None:
    """Where a HunyuanVideo diffusers key goes in the NNX model, or None when no rule knows it."""
    return map_key(HUNYUAN_DIFFUSERS_RULES, key)
