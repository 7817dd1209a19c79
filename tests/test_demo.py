"""The examples run end to end: the attention-layer demo (kernels match their oracles) and `make demo`."""

import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
LAYER_DEMO = EXAMPLES / "attention_layer.py"


def test_attention_layer_demo_runs_and_kernels_match_oracles():
    args = ["--frames", "3", "--height", "4", "--width", "8", "--heads", "2", "--head-dim", "32"]
    proc = subprocess.run(
        [sys.executable, str(LAYER_DEMO), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All kernels match their exact oracles" in proc.stdout
    assert "SVG1 band" in proc.stdout and "SVG2 clusters" in proc.stdout


def test_attention_layer_demo_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, str(LAYER_DEMO), "--frames", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--frames must be >= 1" in proc.stderr


def test_make_demo_pipeline_runs_small(tmp_path):
    """`make demo`'s script on a smaller clip: checkpoint → convert → generate ×3 → table and plots."""
    args = [
        "--out",
        tmp_path / "demo",
        "--steps",
        "3",
        "--dense-steps",
        "1",
        "--frames",
        "5",
        "--size",
        "128",
    ]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for method in ("dense", "svg1", "svg2"):
        assert f"\n{method} " in proc.stdout
        assert (tmp_path / "demo" / method / "latents.safetensors").exists()
    assert (tmp_path / "demo" / "svg2_cluster_map.png").stat().st_size > 0
    assert (tmp_path / "demo" / "svg1_heads.png").stat().st_size > 0
