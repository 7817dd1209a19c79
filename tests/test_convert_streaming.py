"""Streaming conversion: peak memory of `svg-jax convert` stays well under the checkpoint size.

A synthetic sharded diffusers checkpoint of a mid-size random Wan config (~64 MB float32) is converted by
the real CLI in a subprocess, and the subprocess's peak RSS is compared against a baseline run on the
tiny fixture (same imports, same code path), so interpreter + jax + orbax overhead cancels out.
"""

import json
import os
import pathlib
import subprocess
import sys

from svg_jax.convert.synthetic import write_random_diffusers_checkpoint
from svg_jax.models import WanConfig

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "wan"
MID = WanConfig(
    num_attention_heads=8,
    attention_head_dim=64,
    in_channels=16,
    out_channels=16,
    text_dim=256,
    ffn_dim=1536,
    num_layers=4,
    rope_max_seq_len=64,
)
SHARD_BYTES = 16 * 2**20
BUFFER_MB = 4


def write_synthetic_checkpoint(folder: pathlib.Path, config: WanConfig) -> int:
    """Random N(0, 1) float32 diffusers-format shards + index + config.json; returns the tensor bytes."""
    return write_random_diffusers_checkpoint(folder, config, init="unit", shard_bytes=SHARD_BYTES)


def peak_rss_of_convert(src: pathlib.Path, dst: pathlib.Path) -> int:
    """Peak RSS (bytes) of one `svg-jax convert` subprocess, read via wait4's rusage."""
    cmd = [
        sys.executable,
        "-m",
        "svg_jax.cli",
        "convert",
        str(src),
        str(dst),
        "--dtype",
        "fp32",
        "--quiet",
        "--buffer-mb",
        str(BUFFER_MB),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert os.waitstatus_to_exitcode(status) == 0, err.decode()
    assert json.loads(out)["num_tensors"] > 0
    return usage.ru_maxrss * 1024  # Linux reports KiB


def test_peak_rss_well_under_checkpoint_size(tmp_path):
    size = write_synthetic_checkpoint(tmp_path / "mid", MID)
    assert len(list((tmp_path / "mid").glob("*.safetensors"))) >= 3  # really sharded
    baseline = peak_rss_of_convert(FIXTURES / "t2v" / "diffusers", tmp_path / "tiny_out")
    peak = peak_rss_of_convert(tmp_path / "mid", tmp_path / "mid_out")
    growth = peak - baseline
    print(
        f"checkpoint {size / 2**20:.1f} MB, baseline RSS {baseline / 2**20:.1f} MB, "
        f"peak RSS {peak / 2**20:.1f} MB, growth {growth / 2**20:.1f} MB"
    )
    assert growth < 0.25 * size, (growth, size)  # measured ~0.16: 4 MB buffer + one 3 MB tensor + copies
    converted = sum(p.stat().st_size for p in (tmp_path / "mid_out").rglob("*") if p.is_file())
    assert converted > 0.9 * size  # everything was written
