"""`bench.asgi_path` with the batcher's cost model frozen at its calibrated values, so that
two checkouts measured under callgrind take the same batching decisions (bench/callgrind.sh).

Run as a file, not a module: `python bench/frozen_path.py --via server --requests 100`, with
PYTHONPATH naming the checkout to measure (this one, or a baseline of an older layout).
"""

from __future__ import annotations

import runpy
import sys

try:
    from service.models import batching
except ImportError:  # a baseline from before service/ had subpackages
    from service import batching  # type: ignore[attr-defined,no-redef]

batching.Batcher._learn = lambda self, rows, seconds: None  # type: ignore[method-assign]
sys.argv = ["bench.asgi_path", *sys.argv[1:]]
runpy.run_module("bench.asgi_path", run_name="__main__")
