"""Where video and text tokens sit in a self-attention sequence, shared by SVG1 and SVG2.

A video DiT's self-attention sequence is ``T·F`` video tokens in frame-major order (token ``f·F + p`` is
spatial position ``p`` of latent frame ``f``), optionally with ``num_text_tokens`` text tokens before
(CogVideoX) or after (HunyuanVideo) them. The geometry is static (hashable, a jit static argument); which
text tokens are padding is data, carried by :class:`TextTokens`.
"""

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

TextPlacement = Literal["none", "first", "last"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TextTokens:
    """Text tokens inside a self-attention sequence.

    ``placement`` and ``num_tokens`` are static. ``valid_len`` (int32 ``[B]``, dynamic) counts the real
    prompt tokens; the remaining ``num_tokens - valid_len`` are padding (HunyuanVideo pads its 256 text
    slots). ``None`` means every text token is valid (CogVideoX).
    """

    placement: Literal["first", "last"] = dataclasses.field(metadata=dict(static=True))
    num_tokens: int = dataclasses.field(metadata=dict(static=True))
    valid_len: Int[Array, " B"] | None = None

    def __post_init__(self):
        if self.placement not in ("first", "last"):
            raise ValueError(f"TextTokens.placement must be 'first' or 'last'; got {self.placement!r}")
        if not isinstance(self.num_tokens, int) or self.num_tokens < 1:
            raise ValueError(f"TextTokens.num_tokens must be a positive int; got {self.num_tokens!r}")

    def valid_mask(self, batch: int) -> Bool[Array, "B ctx"]:
        """True for prompt tokens, False for padding, over the text slots in sequence order."""
        if self.valid_len is None:
            return jnp.ones((batch, self.num_tokens), jnp.bool_)
        return jnp.arange(self.num_tokens)[None, :] < jnp.asarray(self.valid_len)[:, None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class VideoLayout:
    """Static geometry of a self-attention sequence: ``T`` latent frames of ``F`` tokens, plus text."""

    num_frames: int
    tokens_per_frame: int
    text_placement: TextPlacement = "none"
    num_text_tokens: int = 0

    def __post_init__(self):
        for name in ("num_frames", "tokens_per_frame"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoLayout.{name} must be a positive int; got {value!r}")
        if self.text_placement not in ("none", "first", "last"):
            raise ValueError(
                f"VideoLayout.text_placement must be 'none', 'first' or 'last'; got {self.text_placement!r}"
            )
        if self.text_placement == "none" and self.num_text_tokens != 0:
            raise ValueError(
                "VideoLayout.num_text_tokens must be 0 when text_placement='none'; "
                f"got {self.num_text_tokens}"
            )
        if self.text_placement != "none" and self.num_text_tokens < 1:
            raise ValueError(
                f"VideoLayout.num_text_tokens must be >= 1 when text_placement={self.text_placement!r}; "
                f"got {self.num_text_tokens}"
            )

    @property
    def num_video_tokens(self) -> int:
        return self.num_frames * self.tokens_per_frame

    @property
    def seq_len(self) -> int:
        return self.num_video_tokens + self.num_text_tokens

    @property
    def video_start(self) -> int:
        """Index of the first video token in the sequence."""
        return self.num_text_tokens if self.text_placement == "first" else 0

    @property
    def text_start(self) -> int | None:
        """Index of the first text token, or None without text."""
        if self.text_placement == "none":
            return None
        return 0 if self.text_placement == "first" else self.num_video_tokens

    def check_seq_len(self, n: int, name: str = "sequence length") -> None:
        if n != self.seq_len:
            raise ValueError(
                f"{name} {n} does not match the layout: T·F + text = "
                f"{self.num_frames}·{self.tokens_per_frame}"
                f" + {self.num_text_tokens} = {self.seq_len}; fix num_frames/tokens_per_frame/num_text_tokens"
            )

    def text_tokens(self, valid_len: Int[Array, " B"] | None = None) -> TextTokens | None:
        """The :class:`TextTokens` description of this layout's text (None without text)."""
        if self.text_placement == "none":
            if valid_len is not None:
                raise ValueError(
                    "valid_len was given but the layout has no text tokens (text_placement='none')"
                )
            return None
        return TextTokens(self.text_placement, self.num_text_tokens, valid_len)
