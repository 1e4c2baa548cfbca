#!/usr/bin/env python3
"""Side-by-side benchmark: Remora vs HAProxy vs nginx vs nghttpx vs Envoy (one worker each). Stdlib only.

Normally started through perf/run.sh (which installs packages, raises the fd limit and
builds Remora if needed). See perf/README.md for what is measured and how to read it.
The code is the package perf/remora_perf/ (layout in its __init__.py); this file is its command line.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # perf/, wherever this is started from

from remora_perf.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
