"""The ``svg-jax`` command line: parses arguments into library calls (no math here).

Results go to stdout as one JSON line; logs, progress bars and errors go to stderr.
"""

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from svg_jax.convert import DTYPES, ConversionError, convert_checkpoint
from svg_jax.convert.api import DEFAULT_BUFFER_BYTES
from svg_jax.models import WAN_PRESETS


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
        help="convert a Wan 2.1 checkpoint (diffusers or original safetensors) to svg-jax/orbax",
        description="Convert a Wan 2.1 transformer checkpoint into an svg-jax checkpoint folder "
        "(orbax params + config.json). Strict: any missing, unexpected or mis-shaped key fails.",
    )
    p.add_argument("src", help="safetensors file, *.safetensors.index.json, or a folder holding them")
    p.add_argument("dst", help="output folder (must not exist unless --force)")
    p.add_argument(
        "--model",
        choices=sorted(WAN_PRESETS),
        help="architecture preset; required when SRC has no diffusers config.json (original format)",
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


# One entry per subcommand; `generate` and `bench` register here when they land.
_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_convert,)


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
