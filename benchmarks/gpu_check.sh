#!/usr/bin/env bash
# The fixed rasterizer and the whole-step CUDA graph on a GPU, in one run of at most 250 s (an H100):
# first the fixed rasterizer against the tiles (renders, gradients, capture, host syncs, speed) and a short
# sketch with and without graphs (benchmarks/raster_check.py), then benchmarks/gpu.py with the fixed
# rasterizer (all measurements) and with the tiles (single sketches and the service, to compare). JSON lines.
# Each part has its own time limit, so that one that hangs leaves the others their time.
set -u
cd "$(dirname "$0")/.."
# The project's environment where `make install` made one, else python3 (the device machine's recipe sets PYTHONPATH).
if [ -x .venv/bin/python ]; then DEFAULT_PYTHON=.venv/bin/python; else DEFAULT_PYTHON=python3; fi
PYTHON=${PYTHON:-$DEFAULT_PYTHON}
timeout 60 "$PYTHON" benchmarks/raster_check.py || echo '{"part": "raster_check", "exit": '$?'}'
timeout 120 "$PYTHON" benchmarks/gpu.py --renderer fixed || echo '{"part": "gpu.py fixed", "exit": '$?'}'
timeout 70 "$PYTHON" benchmarks/gpu.py --renderer tiles --only single,service || echo '{"part": "gpu.py tiles", "exit": '$?'}'
