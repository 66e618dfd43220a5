"""Shared helpers for the side-by-side benchmarks: timing and result files."""

import datetime
import json
import os
import platform
import time
from typing import Callable, Dict, List

import jax
import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timeit(fn: Callable, *args, repeats: int = 7, min_time: float = 0.2):
  """Median wall seconds of `fn(*args)` (blocked), after one warm-up call.

  Each sample loops until `min_time` has passed so short calls are not
  dominated by timer noise.
  """
  jax.block_until_ready(fn(*args))
  samples = []
  for _ in range(repeats):
    count, start = 0, time.perf_counter()
    while True:
      jax.block_until_ready(fn(*args))
      count += 1
      elapsed = time.perf_counter() - start
      if elapsed >= min_time / repeats:
        break
    samples.append(elapsed / count)
  return float(np.median(samples))


def machine() -> Dict[str, str]:
  return {
      "date": datetime.date.today().isoformat(),
      "backend": jax.default_backend(),
      "devices": str(jax.devices()[0].device_kind),
      "cpu_count": str(os.cpu_count()),
      "python": platform.python_version(),
      "jax": jax.__version__,
  }


def markdown_table(rows: List[Dict], columns: List[str]) -> str:
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "---|" * len(columns)]
  for row in rows:
    cells = []
    for c in columns:
      v = row.get(c, "")
      cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write(name: str, payload: Dict, markdown: str) -> None:
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
    json.dump(payload, f, indent=1)
  with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
    f.write(markdown + "\n")
  print(markdown)
