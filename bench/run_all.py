"""Run every benchmark in one go; each prints its ratios on one line."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script, *args in (("p1_loop_throughput.py",), ("p3_data_load.py",), ("startup.py",), ("p2_trial_overhead.py",),
                      ("p4_search_efficiency.py",), ("p5_concurrency.py",), ("stream_memory.py",), ("joined_memory.py",),
                      ("serving.py",), ("scale.py", "--trials", "1000"), ("checkpoint_pace.py",)):
    subprocess.run([sys.executable, str(HERE / script), *args], check=True, cwd=HERE)
