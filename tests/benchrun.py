"""Running bench/run.py --quick from the tests: its figures are not checked (machines
differ), only that it ends well and prints what it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def quick_bench(*args: str, timeout: float = 300) -> str:
    """`bench/run.py --quick` with `args`; its output, after asserting it exited 0."""
    result = subprocess.run([sys.executable, "bench/run.py", "--quick", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout
