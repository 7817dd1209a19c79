"""`make demo` runs end to end (on a smaller layer) and its kernels match their oracles."""

import pathlib
import subprocess
import sys

DEMO = pathlib.Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def test_demo_runs_and_kernels_match_oracles():
    args = ["--frames", "3", "--height", "4", "--width", "8", "--heads", "2", "--head-dim", "32"]
    proc = subprocess.run([sys.executable, str(DEMO), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All kernels match their exact oracles" in proc.stdout
    assert "SVG1 band" in proc.stdout and "SVG2 clusters" in proc.stdout


def test_demo_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, str(DEMO), "--frames", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--frames must be >= 1" in proc.stderr
