"""Key-mapping rules (Wan 2.1): original-release → diffusers names, and diffusers names → NNX paths.

Every rule is an anchored full-match regex. Diffusers rules name their target with a template over the
regex's named groups and carry a named :class:`Transform`; a ``layer`` group marks a block parameter,
which lands at index ``layer`` of the stacked ``[num_layers, ...]`` leaf. No rule is order-dependent: the
tests assert that no key of the released checkpoints matches two rules. :func:`map_key`,
:func:`match_rule` and :func:`diffusers_key_of` serve every model family's rule table.
"""

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .params import Stack, storage_path


@dataclasses.dataclass(frozen=True)
class Transform:
    """A layout change from a torch tensor to its NNX parameter, with its effect on the shape."""

    name: str
    rank: int | None  # required source rank; None accepts any
    apply: Callable[[np.ndarray], np.ndarray]
    perm: tuple[int, ...] | None = None  # axis permutation (None: identity)

    def shape(self, source_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Target shape for ``source_shape``; raises ValueError when the rank is wrong."""
        if self.rank is not None and len(source_shape) != self.rank:
            raise ValueError(
                f"transform {self.name!r} needs a rank-{self.rank} tensor; got shape {source_shape}"
            )
        if self.perm is None:
            return tuple(source_shape)
        return tuple(source_shape[i] for i in self.perm)


def _permute(perm: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: np.ascontiguousarray(a.transpose(perm))


TRANSFORMS: dict[str, Transform] = {
    "identity": Transform("identity", None, lambda a: a),
    # torch Linear weight [out, in] → nnx.Linear kernel [in, out].
    "linear_w": Transform("linear_w", 2, _permute((1, 0)), (1, 0)),
    # torch Conv3d weight [out, in, t, h, w] → kernel [t, h, w, in, out].
    "conv3d_w": Transform("conv3d_w", 5, _permute((2, 3, 4, 1, 0)), (2, 3, 4, 1, 0)),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """``pattern`` (full match) → ``target`` (``str.format`` over the named groups) via ``transform``."""

    pattern: str
    target: str
    transform: str = "identity"
    values: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"Rule.transform must be one of {sorted(TRANSFORMS)}; got {self.transform!r}")
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def apply(self, key: str) -> str | None:
        """The rendered target for ``key``, or None when the rule does not match."""
        m = self._regex.fullmatch(key)
        if m is None:
            return None
        groups = {k: self.values.get(k, {}).get(v, v) for k, v in m.groupdict().items()}
        return self.target.format(**groups)


@dataclasses.dataclass(frozen=True)
class Mapped:
    """Where one diffusers tensor goes: NNX path, block index (None for top-level) and transform."""

    target: str
    layer: int | None
    transform: Transform


_LINEARS = r"attn[12]\.(?:to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)|ffn\.net\.0\.proj|ffn\.net\.2"
_TOP_LINEARS = (
    r"condition_embedder\.(?:time_embedder\.linear_[12]|time_proj|text_embedder\.linear_[12]"
    r"|image_embedder\.ff\.net\.0\.proj|image_embedder\.ff\.net\.2)|proj_out"
)

# diffusers key → NNX path (the layer index is dropped from block paths: leaves are stacked).
DIFFUSERS_RULES: tuple[Rule, ...] = (
    Rule(rf"blocks\.(?P<layer>\d+)\.(?P<m>{_LINEARS})\.weight", "blocks.{m}.kernel", "linear_w"),
    Rule(rf"blocks\.(?P<layer>\d+)\.(?P<m>{_LINEARS})\.bias", "blocks.{m}.bias"),
    Rule(
        r"blocks\.(?P<layer>\d+)\.(?P<m>attn[12]\.(?:norm_q|norm_k|norm_added_k))\.weight", "blocks.{m}.scale"
    ),
    Rule(r"blocks\.(?P<layer>\d+)\.norm2\.weight", "blocks.norm2.scale"),
    Rule(r"blocks\.(?P<layer>\d+)\.norm2\.bias", "blocks.norm2.bias"),
    Rule(r"blocks\.(?P<layer>\d+)\.scale_shift_table", "blocks.scale_shift_table"),
    Rule(r"patch_embedding\.weight", "patch_embedding.kernel", "conv3d_w"),
    Rule(r"patch_embedding\.bias", "patch_embedding.bias"),
    Rule(rf"(?P<m>{_TOP_LINEARS})\.weight", "{m}.kernel", "linear_w"),
    Rule(rf"(?P<m>{_TOP_LINEARS})\.bias", "{m}.bias"),
    Rule(
        r"condition_embedder\.image_embedder\.(?P<n>norm[12])\.weight",
        "condition_embedder.image_embedder.{n}.scale",
    ),
    Rule(
        r"condition_embedder\.image_embedder\.(?P<n>norm[12])\.bias",
        "condition_embedder.image_embedder.{n}.bias",
    ),
    Rule(r"condition_embedder\.image_embedder\.pos_embed", "condition_embedder.image_embedder.pos_embed"),
    Rule(r"scale_shift_table", "scale_shift_table"),
)

# Keys diffusers itself drops on load (WanTransformer3DModel._keys_to_ignore_on_load_unexpected).
IGNORED_DIFFUSERS_KEYS: tuple[str, ...] = (r"blocks\.\d+\.attn2\.norm_added_q\.weight",)

_ATTN_NAMES = {"self_attn": "attn1", "cross_attn": "attn2"}
_ATTN_PARTS = {
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "o": "to_out.0",
    "norm_q": "norm_q",
    "norm_k": "norm_k",
    "k_img": "add_k_proj",
    "v_img": "add_v_proj",
    "norm_k_img": "norm_added_k",
}

# Original Wan release (and ComfyUI repacks, prefix stripped) → diffusers names. Pure renames: the
# original ``norm3`` is the affine cross-attention norm, diffusers' ``norm2``.
ORIGINAL_RULES: tuple[Rule, ...] = (
    Rule(
        r"blocks\.(?P<layer>\d+)\.(?P<attn>self_attn|cross_attn)\."
        r"(?P<part>q|k|v|o|norm_q|norm_k|k_img|v_img|norm_k_img)\.(?P<p>weight|bias)",
        "blocks.{layer}.{attn}.{part}.{p}",
        values={"attn": _ATTN_NAMES, "part": _ATTN_PARTS},
    ),
    Rule(r"blocks\.(?P<layer>\d+)\.norm3\.(?P<p>weight|bias)", "blocks.{layer}.norm2.{p}"),
    Rule(r"blocks\.(?P<layer>\d+)\.modulation", "blocks.{layer}.scale_shift_table"),
    Rule(
        r"blocks\.(?P<layer>\d+)\.ffn\.(?P<i>[02])\.(?P<p>weight|bias)",
        "blocks.{layer}.ffn.{i}.{p}",
        values={"i": {"0": "net.0.proj", "2": "net.2"}},
    ),
    Rule(r"patch_embedding\.(?P<p>weight|bias)", "patch_embedding.{p}"),
    Rule(
        r"(?P<m>time_embedding|text_embedding)\.(?P<i>[02])\.(?P<p>weight|bias)",
        "condition_embedder.{m}.{i}.{p}",
        values={
            "m": {"time_embedding": "time_embedder", "text_embedding": "text_embedder"},
            "i": {"0": "linear_1", "2": "linear_2"},
        },
    ),
    Rule(r"time_projection\.1\.(?P<p>weight|bias)", "condition_embedder.time_proj.{p}"),
    Rule(r"head\.head\.(?P<p>weight|bias)", "proj_out.{p}"),
    Rule(r"head\.modulation", "scale_shift_table"),
    Rule(
        r"img_emb\.proj\.(?P<i>[0134])\.(?P<p>weight|bias)",
        "condition_embedder.image_embedder.{i}.{p}",
        values={"i": {"0": "norm1", "1": "ff.net.0.proj", "3": "ff.net.2", "4": "norm2"}},
    ),
    Rule(r"img_emb\.emb_pos", "condition_embedder.image_embedder.pos_embed"),
)

# Wan's one stacked block group.
WAN_STACKS: tuple[Stack, ...] = (Stack("blocks", "num_layers"),)

# ComfyUI repacks prefix every key of the original format with this.
COMFY_PREFIX = "model.diffusion_model."


def match_rule(rules: tuple[Rule, ...], key: str) -> tuple[Rule, str] | None:
    """The one rule of ``rules`` that matches ``key`` and its rendered target, or None."""
    hits = [(rule, out) for rule in rules if (out := rule.apply(key)) is not None]
    assert len(hits) <= 1, f"key {key!r} matches {len(hits)} rules: {[r.pattern for r, _ in hits]}"
    return hits[0] if hits else None


def map_key(rules: tuple[Rule, ...], key: str) -> Mapped | None:
    """Where a diffusers key goes in the NNX model under ``rules``, or None when no rule knows it."""
    hit = match_rule(rules, key)
    if hit is None:
        return None
    rule, target = hit
    layer = re.fullmatch(rule.pattern, key).groupdict().get("layer")
    return Mapped(target, None if layer is None else int(layer), TRANSFORMS[rule.transform])


def diffusers_key_of(target: str, layer: int | None, stacks: Sequence[Stack]) -> str:
    """The diffusers key that fills ``target`` (at ``layer`` of its stack): used to name missing tensors.

    Inverse of the diffusers rules of every family (our paths are diffusers' with ``weight`` →
    ``kernel``/``scale`` and no block index); the tests check the round trip on every released key.
    """
    module, _, leaf = target.rpartition(".")
    name = f"{module}.weight" if leaf in ("kernel", "scale") else target
    return storage_path(name, layer, stacks)


def original_to_diffusers(key: str) -> str | None:
    """The diffusers name of an original-release Wan key, or None when no rule knows it."""
    hit = match_rule(ORIGINAL_RULES, key)
    return None if hit is None else hit[1]


def is_ignored(diffusers_key: str) -> bool:
    """Whether diffusers itself drops this Wan key on load."""
    return any(re.fullmatch(p, diffusers_key) for p in IGNORED_DIFFUSERS_KEYS)


def map_diffusers_key(key: str) -> Mapped | None:
    """Where a Wan diffusers key goes in the NNX model, or None when no rule knows it."""
    return map_key(DIFFUSERS_RULES, key)


def expected_diffusers_key(target: str, layer: int | None) -> str:
    """The Wan diffusers key that fills ``target`` (at ``layer``): see :func:`diffusers_key_of`."""
    return diffusers_key_of(target, layer, WAN_STACKS)
