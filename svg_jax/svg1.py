"""SVG1 (Sparse VideoGen): online spatial/temporal head profiling and band-sparse attention.

Per sparse self-attention call (svg_methods.md §1.1): sample query rows, compare each head's exact
attention on them with the output under a spatial and a temporal band mask, label the head with the lower
MSE, place temporal heads in token-major order (:mod:`svg_jax.placement`), run one block-sparse call with
the shared band over all heads, and undo the placement. Masks are analytic tile masks
(:mod:`svg_jax.svg1_masks`, whose docstring relates them to the official element masks).

Everything is traceable with static config and layout: no host sync, no Python branching on traced values.
Dense warm-up steps and layers are a static schedule (:meth:`SVG1Config.is_dense`) owned by the sampler.
"""

import dataclasses
import logging
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from svg_jax.pallas_kernels import block_mask_to_indices, block_sparse_attention, masked_attention_reference
from svg_jax.pallas_kernels.common import resolve_implementation
from svg_jax.pallas_kernels.mosaic_flash import mosaic_supports

from .layout import TextTokens, VideoLayout
from .placement import PermuteImplementation, place_heads
from .svg1_masks import (
    TileGeometry,
    band_block_mask,
    band_blocks_from_frames,
    head_element_mask,
    key_padding,
    mask_density,
    max_blocks_per_row,
    real_keys,
    row_masks,
    sparsity_to_width,
    text_valid_len,
)

log = logging.getLogger(__name__)

KERNEL_BLOCK_K = 64  # key tile of the Triton band kernel; mask tiles are split into these
MOSAIC_BLOCK = 128  # query and key tile of the Mosaic (Hopper) kernel

SPATIAL, TEMPORAL = 0, 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class SVG1Config:
    """SVG1 method hyperparameters (hashable: a static jit argument).

    ``density`` is the fraction of the attention matrix kept (the official ``--sparsity`` flag, which is a
    density). ``band_rounding`` is how the official mask rounds the band to 128-token blocks: Wan
    ``'ceil'`` (with ``≤``), HunyuanVideo and CogVideoX ``'floor'`` (with ``<``). ``profile_band_frames``
    is the band half-width of the *profiling* masks in frames (official ``block_thres / F``: 2 for Wan,
    1.5 for HunyuanVideo and CogVideoX); ``None`` profiles with the runtime band. ``dense_steps`` /
    ``dense_layers`` count the first denoising steps / layers that run dense (the official
    ``first_times_fp`` / ``first_layers_fp`` after the floor).
    """

    density: float
    num_sampled_rows: int = 64
    dense_steps: int = 0
    dense_layers: int = 0
    first_frame_sink: bool = False
    block_size: int = 128
    band_rounding: Literal["ceil", "floor"] = "floor"
    profile_band_frames: float | None = None

    def __post_init__(self):
        if not isinstance(self.density, (int, float)) or not 0.0 < self.density <= 1.0:
            raise ValueError(f"SVG1Config.density must lie in (0, 1] (fraction kept); got {self.density!r}")
        if not isinstance(self.num_sampled_rows, int) or self.num_sampled_rows < 1:
            raise ValueError(
                f"SVG1Config.num_sampled_rows must be a positive int; got {self.num_sampled_rows!r}"
            )
        for name in ("dense_steps", "dense_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"SVG1Config.{name} must be a non-negative int; got {value!r}")
        bs = self.block_size
        if not isinstance(bs, int) or bs < 16 or bs & (bs - 1):
            raise ValueError(f"SVG1Config.block_size must be a power of two >= 16 (kernel tiles); got {bs!r}")
        if self.band_rounding not in ("ceil", "floor"):
            raise ValueError(
                f"SVG1Config.band_rounding must be 'ceil' or 'floor'; got {self.band_rounding!r}"
            )
        if self.profile_band_frames is not None and not self.profile_band_frames > 0:
            raise ValueError(
                f"SVG1Config.profile_band_frames must be positive or None; got {self.profile_band_frames!r}"
            )

    def is_dense(self, step: int, layer: int) -> bool:
        """Whether (denoising step, layer) runs dense attention (a static, host-side schedule)."""
        return step < self.dense_steps or layer < self.dense_layers

    def band_blocks(self, layout: VideoLayout) -> int:
        """Runtime band half-width ``c`` in tiles (tiles ``|i − j| ≤ c`` kept), from ``sparsity_to_width``.

        ``density=1`` keeps every tile. ``sparsity_to_width`` alone does not ensure it with text tokens:
        it spends the text rows' budget and then sizes the band over all ``N`` tokens, so the band stops
        short of the video corners (the official formula: 100 text tokens before 512 video tokens keep
        85 % of the matrix at density 1).
        """
        if self.density >= 1.0:
            return max(-(-layout.seq_len // self.block_size) - 1, 1)  # every tile distance
        frames = sparsity_to_width(
            self.density, layout.num_text_tokens, layout.num_frames, layout.tokens_per_frame
        )
        return band_blocks_from_frames(frames, layout.tokens_per_frame, self.block_size, self.band_rounding)

    def profile_band_blocks(self, layout: VideoLayout) -> int:
        """Band half-width of the profiling masks: official ``|i − j| < block_thres // 128``."""
        if self.profile_band_frames is None:
            return self.band_blocks(layout)
        thres = int(self.profile_band_frames * layout.tokens_per_frame) // self.block_size
        return max(thres - 1, 0)


# Presets equal to the official scripts (svg_methods.md §1.4; dense counts after the floor).
def _wan(dense_steps: int) -> SVG1Config:
    # wan_*_svg.sh: density 0.30, 1 dense layer, first-frame sink, ceil rounding, 2-frame profiling band.
    return SVG1Config(
        density=0.30,
        dense_steps=dense_steps,
        dense_layers=1,
        first_frame_sink=True,
        band_rounding="ceil",
        profile_band_frames=2.0,
    )


WAN21_T2V_720P = _wan(dense_steps=10)  # 0.2 of 50 steps
WAN21_I2V_720P = _wan(dense_steps=14)  # 0.35 of 40 steps
WAN21_I2V_480P = _wan(dense_steps=8)  # 0.2 of 40 steps
HUNYUAN_T2V_720P = SVG1Config(
    density=0.25, dense_steps=5, dense_layers=1, band_rounding="floor", profile_band_frames=1.5
)  # 50 steps
HUNYUAN_T2V_480P = SVG1Config(
    density=0.20, dense_steps=2, dense_layers=0, band_rounding="floor", profile_band_frames=1.5
)  # 50 steps
# cog_inference.py defaults: 32 sampled rows; dense while t > 1000·(1 − 0.2) ≈ the first 10 of 50 steps;
# dense layers 0 and 1 (layer < 42·0.025).
COGVIDEOX15_I2V = SVG1Config(
    density=0.25,
    num_sampled_rows=32,
    dense_steps=10,
    dense_layers=2,
    band_rounding="floor",
    profile_band_frames=1.5,
)

PRESETS: dict[str, SVG1Config] = {
    "wan2.1-t2v-14b-720p": WAN21_T2V_720P,
    "wan2.1-i2v-14b-720p": WAN21_I2V_720P,
    "wan2.1-i2v-14b-480p": WAN21_I2V_480P,
    "hunyuanvideo-t2v-720p": HUNYUAN_T2V_720P,
    "hunyuanvideo-t2v-480p": HUNYUAN_T2V_480P,
    "cogvideox1.5-5b-i2v": COGVIDEOX15_I2V,
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVG1Stats:
    """What one SVG1 call decided.

    ``head_choice``: 0 = spatial, 1 = temporal, per (batch, head). ``mse_spatial`` / ``mse_temporal``: the
    profiling MSEs (mean over sampled rows and head dim). ``density``: fraction of the ``N × N`` score
    matrix inside the computed tiles, per batch element. ``sampled_rows``: the profiled query positions.
    """

    head_choice: Int[Array, "B H"]
    mse_spatial: Float[Array, "B H"]
    mse_temporal: Float[Array, "B H"]
    density: Float[Array, " B"]
    sampled_rows: Int[Array, " R"]


def _check_inputs(q, k, v, layout: VideoLayout, text: TextTokens | None) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must have rank 4 [B, N, H, D]; got shape {x.shape}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"SVG1 self-attention needs q, k, v of one shape; got {q.shape=}, {k.shape=}, {v.shape=}"
        )
    layout.check_seq_len(q.shape[1], "q.shape[1]")
    if text is not None:
        if layout.text_placement == "none":
            raise ValueError("text was given but the layout has no text tokens (text_placement='none')")
        if (text.placement, text.num_tokens) != (layout.text_placement, layout.num_text_tokens):
            raise ValueError(
                f"text must match the layout: layout has {layout.text_placement!r} × "
                f"{layout.num_text_tokens}, text has {text.placement!r} × {text.num_tokens}"
            )


def _padded(layout: VideoLayout, text: TextTokens | None) -> bool:
    """Whether the text has padding slots (a per-batch valid length)."""
    return layout.text_placement != "none" and text is not None and text.valid_len is not None


def _masked_rows_attention(s, v, mask):
    """``softmax(s masked) @ v`` for sampled rows: s ``[B, H, R, N]`` f32, mask ``[B, R, N]`` or None."""
    if mask is not None:
        s = jnp.where(mask[:, None], s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom == 0.0, 1.0, denom)
    precision = jax.lax.Precision.HIGHEST if v.dtype == jnp.float32 else None
    return jnp.einsum(
        "bhrn,bnhd->bhrd", p.astype(v.dtype), v, precision=precision, preferred_element_type=jnp.float32
    )  # [B, H, R, D]


def profile_heads(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B N H D"],
    v: Float[Array, "B N H D"],
    *,
    config: SVG1Config,
    layout: VideoLayout,
    key: jax.Array,
    text: TextTokens | None = None,
    sm_scale: float | None = None,
) -> tuple[Int[Array, "B H"], Float[Array, "B H"], Float[Array, "B H"], Int[Array, " R"]]:
    """Label each (batch, head) spatial (0) or temporal (1) from ``num_sampled_rows`` sampled query rows.

    The rows are drawn uniformly (with replacement, as ``torch.randint``) over the **whole** video part of
    the sequence. The official code samples only the first 10,000 tokens (``sample_mse_max_row``), because
    it slices dense ``N × N`` masks to 10k rows to avoid running out of memory; that biases Wan 720p
    towards the first ~2.8 latent frames. Our masks are analytic, so we need not. Only video rows are
    sampled (official CogVideoX also samples its text rows). The candidates are the tile masks of
    :mod:`svg_jax.svg1_masks` with the profiling half-width (``profile_band_frames``), text rows/columns
    and sink included in both (official CogVideoX adds text rows/columns to the spatial candidate only).
    The logits are f32 (the official code computes in bf16); the MSE is plain MSE over rows and head dim;
    ties pick spatial. Returns ``(head_choice, mse_spatial, mse_temporal, sampled_rows)``.
    """
    b, n, _, d = q.shape
    geom = TileGeometry(layout=layout, block_size=config.block_size, first_frame_sink=config.first_frame_sink)
    valid_len = text_valid_len(layout, text, b)
    offsets = jax.random.randint(key, (config.num_sampled_rows,), 0, layout.num_video_tokens)
    rows = (layout.video_start + offsets).astype(jnp.int32)  # [R]
    scale = d**-0.5 if sm_scale is None else sm_scale
    precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
    s = (
        jnp.einsum("brhd,bnhd->bhrn", q[:, rows], k, precision=precision, preferred_element_type=jnp.float32)
        * scale
    )  # [B, H, R, N]
    spatial, temporal = row_masks(geom, valid_len, rows, config.profile_band_blocks(layout))  # [B, R, N]
    golden_mask = None
    if _padded(layout, text):  # video queries never see padding keys in the dense model
        golden_mask = jnp.broadcast_to(real_keys(layout, valid_len)[:, None, :], spatial.shape)  # [B, R, N]
    golden = _masked_rows_attention(s, v, golden_mask)
    mse_s = jnp.mean((_masked_rows_attention(s, v, spatial) - golden) ** 2, axis=(2, 3))  # [B, H]
    mse_t = jnp.mean((_masked_rows_attention(s, v, temporal) - golden) ** 2, axis=(2, 3))  # [B, H]
    choice = jnp.where(mse_t < mse_s, TEMPORAL, SPATIAL).astype(jnp.int32)
    return choice, mse_s, mse_t, rows


def band_kernel_lists(
    config: SVG1Config,
    layout: VideoLayout,
    text: TextTokens | None,
    batch: int,
    heads: int,
    kernel_block_k: int = KERNEL_BLOCK_K,
):
    """The band as kernel lists ``(block_mask [B,nb,nb], indices [B,H,nb,K], counts [B,H,nb], block_k)``.

    The kernel runs ``block_size × kernel_block_k`` tiles (Triton: 128×64 is its fastest shape on H100;
    Mosaic: 128×128, see benchmarks/): each mask tile's key side is split into
    ``block_size // block_k`` kernel blocks, which selects exactly the same keys.
    """
    geom = TileGeometry(layout=layout, block_size=config.block_size, first_frame_sink=config.first_frame_sink)
    band = config.band_blocks(layout)
    block_mask = band_block_mask(geom, text_valid_len(layout, text, batch), band)  # [B, nb, nb]
    block_k = min(kernel_block_k, config.block_size)
    split = config.block_size // block_k
    fine_mask = jnp.repeat(block_mask, split, axis=-1)[..., : -(-layout.seq_len // block_k)]  # [B, nb, nkb]
    idx, cnt = block_mask_to_indices(fine_mask, max_kv_blocks=split * max_blocks_per_row(geom, band))
    idx = jnp.broadcast_to(idx[:, None], (batch, heads, *idx.shape[1:]))  # [B, H, nb, K]
    cnt = jnp.broadcast_to(cnt[:, None], (batch, heads, cnt.shape[-1]))  # [B, H, nb]
    return block_mask, idx, cnt, block_k


def svg1_attention(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B N H D"],
    v: Float[Array, "B N H D"],
    *,
    config: SVG1Config,
    layout: VideoLayout,
    key: jax.Array,
    text: TextTokens | None = None,
    sm_scale: float | None = None,
    implementation: str = "auto",
    permute_implementation: PermuteImplementation = "auto",
    interpret: bool | None = None,
) -> tuple[Float[Array, "B N H D"], SVG1Stats]:
    """SVG1 sparse self-attention over a ``[B, N, H, D]`` video(+text) sequence.

    ``layout`` fixes ``N = T·F + ctx`` and where text sits; ``text`` (optional) carries HunyuanVideo's
    per-batch valid prompt length: no query sees a padding key (masked per element inside the kept
    tiles, :mod:`svg_jax.svg1_masks`). ``key`` draws the profiled rows.
    ``implementation`` selects the block-sparse kernel (see :func:`block_sparse_attention`);
    ``permute_implementation`` the layout transformation (see :func:`place_heads`).
    """
    _check_inputs(q, k, v, layout, text)
    b, _, h, _ = q.shape
    geom = TileGeometry(layout=layout, block_size=config.block_size, first_frame_sink=config.first_frame_sink)
    band = config.band_blocks(layout)
    log.debug("SVG1 band %d tiles of %d on each side (N=%d)", band, config.block_size, layout.seq_len)

    choice, mse_s, mse_t, rows = profile_heads(
        q, k, v, config=config, layout=layout, key=key, text=text, sm_scale=sm_scale
    )
    temporal = choice == TEMPORAL
    qp, kp, vp = place_heads(
        (q, k, v), layout, temporal, implementation=permute_implementation, interpret=interpret
    )

    # The Mosaic (Hopper) kernel is fastest on whole 128×128 mask tiles, Triton on 128×64.
    mosaic = config.block_size == MOSAIC_BLOCK and mosaic_supports(q, MOSAIC_BLOCK, MOSAIC_BLOCK)
    impl = resolve_implementation(implementation, mosaic_ok=mosaic)
    kernel_block_k = MOSAIC_BLOCK if impl == "pallas_mosaic" else KERNEL_BLOCK_K
    block_mask, idx, cnt, block_k = band_kernel_lists(config, layout, text, b, h, kernel_block_k)
    pad = key_padding(layout, text_valid_len(layout, text, b)) if _padded(layout, text) else None
    out_p = block_sparse_attention(
        qp,
        kp,
        vp,
        idx,
        cnt,
        block_q=config.block_size,
        block_k=block_k,
        sm_scale=sm_scale,
        implementation=impl,
        interpret=interpret,
        key_padding=pad,
    )
    (out,) = place_heads(
        (out_p,), layout, temporal, inverse=True, implementation=permute_implementation, interpret=interpret
    )
    stats = SVG1Stats(
        head_choice=choice,
        mse_spatial=mse_s,
        mse_temporal=mse_t,
        density=mask_density(geom, block_mask),
        sampled_rows=rows,
    )
    return out, stats


def svg1_mask_reference(
    config: SVG1Config, layout: VideoLayout, head_choice: Int[Array, "B H"], text: TextTokens | None = None
) -> Bool[Array, "B H N N"]:
    """Dense per-head element mask of SVG1's tiles, in original token order. ``N × N``: tests only."""
    geom = TileGeometry(layout=layout, block_size=config.block_size, first_frame_sink=config.first_frame_sink)
    valid_len = text_valid_len(layout, text, head_choice.shape[0])
    return head_element_mask(geom, valid_len, head_choice == TEMPORAL, config.band_blocks(layout))


def svg1_attention_reference(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B N H D"],
    v: Float[Array, "B N H D"],
    head_choice: Int[Array, "B H"],
    *,
    config: SVG1Config,
    layout: VideoLayout,
    text: TextTokens | None = None,
    sm_scale: float | None = None,
) -> Float[Array, "B N H D"]:
    """Oracle: dense f32 attention masked per head by the chosen spatial/temporal tile mask."""
    _check_inputs(q, k, v, layout, text)
    mask = svg1_mask_reference(config, layout, head_choice, text)
    return masked_attention_reference(q, k, v, mask, sm_scale=sm_scale)
