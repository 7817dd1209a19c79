"""The ``svg-jax`` command line: parses arguments into library calls (no math here).

Results go to stdout as one JSON line; logs, progress bars and errors go to stderr.
"""

import argparse
import json
import logging
import pathlib
import sys
from collections.abc import Callable, Sequence

from svg_jax.convert import DTYPES, PRESET_NAMES, ConversionError, convert_checkpoint
from svg_jax.convert.api import DEFAULT_BUFFER_BYTES
from svg_jax.svg2 import QUERY_TILES


def _run_convert(args: argparse.Namespace) -> int:
    try:
        result = convert_checkpoint(
            args.src,
            args.dst,
            model=args.model,
            dtype=args.dtype,
            fmt=args.format,
            force=args.force,
            buffer_bytes=args.buffer_mb * 2**20,
            progress=not args.quiet,
        )
    except ConversionError as e:
        print(f"svg-jax convert: error: {e}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "dst": str(result.dst),
                "source_format": result.source_format,
                "param_dtype": result.param_dtype,
                "num_params": result.num_params,
                "num_tensors": result.num_tensors,
            }
        )
    )
    return 0


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a Wan 2.1 (diffusers or original) or HunyuanVideo (diffusers) safetensors checkpoint "
        "to svg-jax/orbax",
        description="Convert a Wan 2.1 or HunyuanVideo transformer checkpoint into an svg-jax checkpoint "
        "folder (orbax params + config.json); the model follows config.json's _class_name or --model. "
        "Strict: any missing, unexpected or mis-shaped key fails.",
    )
    p.add_argument("src", help="safetensors file, *.safetensors.index.json, or a folder holding them")
    p.add_argument("dst", help="output folder (must not exist unless --force)")
    p.add_argument(
        "--model",
        choices=PRESET_NAMES,
        help="architecture preset (wan2.1-* or hunyuanvideo-t2v); required when SRC has no diffusers "
        "config.json (original format)",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bf16",
        help="storage dtype of the weights (float32 modules stay float32); default bf16",
    )
    p.add_argument(
        "--format",
        choices=("auto", "diffusers", "original"),
        default="auto",
        help="key naming of SRC; auto detects it from the keys",
    )
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.add_argument(
        "--buffer-mb",
        type=int,
        default=DEFAULT_BUFFER_BYTES // 2**20,
        help="write weights in batches of about this many MB (bounds peak memory); default %(default)s",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_convert)


def _run_generate(args: argparse.Namespace) -> int:
    # Imported here: sampling pulls in the models and kernels, which `convert` does not need.
    from svg_jax.generate import GenerateError, prepare, resolve, run

    try:
        request = resolve(
            preset=args.preset,
            attention=args.attention,
            height=args.height,
            width=args.width,
            frames=args.frames,
            steps=args.steps,
            guidance=args.guidance,
            flow_shift=args.flow_shift,
            dense_steps=args.dense_steps,
            dense_layers=args.dense_layers,
            density=args.density,
            q_clusters=args.q_clusters,
            k_clusters=args.k_clusters,
            top_p=args.top_p,
            min_k_token_ratio=args.min_k_token_ratio,
            query_tiles=args.query_tiles,
            checkpoint=pathlib.Path(args.checkpoint),
            prompt_embeds=pathlib.Path(args.prompt_embeds),
            negative_embeds=None if args.negative_embeds is None else pathlib.Path(args.negative_embeds),
            image_inputs=None if args.image_inputs is None else pathlib.Path(args.image_inputs),
            init_latents=None if args.init_latents is None else pathlib.Path(args.init_latents),
            out=pathlib.Path(args.out),
            seed=args.seed,
            dtype=args.dtype,
            force=args.force,
            progress=not args.quiet,
        )
        inputs = prepare(request)
    except GenerateError as e:
        print(f"svg-jax generate: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(run(request, inputs)))
    return 0


def _add_generate(subparsers: argparse._SubParsersAction) -> None:
    from svg_jax.presets import PRESETS

    p = subparsers.add_parser(
        "generate",
        help="sample video latents from a converted checkpoint with dense, SVG1 or SVG2 attention",
        description="Sample video latents with a converted Wan 2.1 checkpoint (svg-jax convert) from "
        "precomputed text embeddings. Writes OUT/latents.safetensors, OUT/log.jsonl (per step and layer: "
        "density, time) and OUT/run.json, atomically. Unset options come from --preset (the official "
        "settings), else from the Wan T2V 720p defaults.",
    )
    p.add_argument("--checkpoint", required=True, help="converted checkpoint folder (svg-jax convert output)")
    p.add_argument(
        "--prompt-embeds",
        required=True,
        help="safetensors/npz with the text-encoder output 'prompt_embeds' [L, D] or [B, L, D]",
    )
    p.add_argument(
        "--negative-embeds",
        help="safetensors/npz with 'negative_prompt_embeds' (required when --guidance > 1)",
    )
    p.add_argument("--image-inputs", help="I2V only: safetensors/npz with 'image_embeds' and 'condition'")
    p.add_argument(
        "--init-latents", help="safetensors/npz with the initial noise 'latents' (default: from --seed)"
    )
    p.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    p.add_argument(
        "--attention", choices=("dense", "svg1", "svg2"), default="svg2", help="default %(default)s"
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="official model × resolution settings")
    p.add_argument("--height", type=int, help="video height in pixels (multiple of 16)")
    p.add_argument("--width", type=int, help="video width in pixels (multiple of 16)")
    p.add_argument("--frames", type=int, help="video frames, 4k+1 (e.g. 81)")
    p.add_argument("--steps", type=int, help="denoising steps (default: preset, else 50)")
    p.add_argument(
        "--guidance", type=float, help="classifier-free guidance scale (default: preset, else 5.0)"
    )
    p.add_argument("--flow-shift", type=float, help="UniPC flow shift (default: preset, else 5.0)")
    p.add_argument("--seed", type=int, default=0, help="noise and SVG sampling seed; default %(default)s")
    p.add_argument(
        "--dtype", choices=("bf16", "fp32"), default="bf16", help="compute dtype; default %(default)s"
    )
    method = p.add_argument_group("sparse attention overrides")
    method.add_argument(
        "--dense-steps", type=int, help="leading dense steps (default: the preset's fraction)"
    )
    method.add_argument("--dense-layers", type=int, help="leading layers always dense")
    method.add_argument("--density", type=float, help="SVG1 attention density (official --sparsity)")
    method.add_argument("--q-clusters", type=int, help="SVG2 query clusters")
    method.add_argument("--k-clusters", type=int, help="SVG2 key clusters")
    method.add_argument("--top-p", type=float, help="SVG2 estimated attention mass kept per query cluster")
    method.add_argument(
        "--min-k-token-ratio",
        type=float,
        help="SVG2 share of the key tokens each query cluster keeps at least (not official; with a tiny "
        "--top-p it fixes the density)",
    )
    method.add_argument(
        "--query-tiles",
        choices=QUERY_TILES,
        help="SVG2 query tiling of the attention kernel (not official): fixed (tiles across cluster "
        "boundaries), aligned (each query cluster padded to whole tiles), paged (aligned, key tiles from "
        "16-row pages; Hopper only) or auto (per call the cheapest of those by work estimates; the default)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_generate)


# One entry per subcommand.
_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_convert, _add_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svg-jax", description="Sparse VideoGen for video DiTs in JAX.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level on stderr")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
