"""Sample every GPU's utilisation and memory once a second with nvidia-smi, until stopped.

    python scripts/gpu_sample.py FILE &    # lines: unix_time,gpu_index,utilization_percent,memory_used_mb

Each line is stamped with the time it arrived (one long-lived `nvidia-smi -l 1`, so no process start per
sample). Without nvidia-smi it writes nothing, says so on stderr and exits 0: a CPU machine runs the same
script. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

QUERY = ["--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-l", "1"]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    smi = shutil.which("nvidia-smi")
    if smi is None:
        print("gpu_sample: no nvidia-smi on PATH; no GPU samples", file=sys.stderr)
        return 0
    child = subprocess.Popen([smi, *QUERY], stdout=subprocess.PIPE, text=True)

    def stop(*_):
        child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(argv[0], "a", buffering=1) as out:
        for line in child.stdout:
            fields = [f.strip() for f in line.split(",")]
            if len(fields) == 3 and all(f.replace(".", "", 1).isdigit() for f in fields):
                out.write(f"{time.time():.3f},{','.join(fields)}\n")
    return 0 if child.wait() in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
