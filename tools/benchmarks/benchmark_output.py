"""Where the benchmark binaries write their results: a JSON file and a plot each."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata


def add_output_argument(parser: argparse.ArgumentParser) -> None:
  """--output, by default tools/benchmarks/results/ of the workspace `bazel run` started in."""
  workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY", os.getcwd())
  parser.add_argument("--output", default=os.path.join(workspace, "tools", "benchmarks", "results"))


def figure(columns: int, width: float, height: float = 4):
  """A matplotlib figure (headless) and its row of `columns` axes."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, columns, figsize=(width, height), squeeze=False)
  return fig, list(axes[0])


# The CPU features reduced-precision and conv kernels depend on.
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
              "amx_int8", "amx_bf16")


def machine() -> dict:
  """What a result depends on: the CPU (model and features), Python, TF, LiteRT."""
  cpu, flags = platform.processor(), []
  try:
    with open("/proc/cpuinfo") as f:
      info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                  if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    cpu = info.get("model name", cpu)
    flags = [f for f in _CPU_FLAGS if f in info.get("flags", "").split()]
  except OSError:
    pass
  return {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(),
          "python": sys.version.split()[0],
          "tensorflow": _version("tensorflow-cpu", "tensorflow"),
          "ai-edge-litert": _version("ai-edge-litert")}


def _version(*distributions: str):
  for distribution in distributions:
    try:
      return metadata.version(distribution)
    except metadata.PackageNotFoundError:
      continue
  return None


def write(output: str, stem: str, result: dict, fig) -> None:
  """Writes `stem`.json (with `machine()`) and `stem`.png into `output` and says so."""
  os.makedirs(output, exist_ok=True)
  with open(os.path.join(output, f"{stem}.json"), "w") as f:
    json.dump(result | {"machine": machine()}, f, indent=2)
  fig.tight_layout()
  fig.savefig(os.path.join(output, f"{stem}.png"), dpi=100)
  print(f"\nwrote {output}/{stem}.json and {stem}.png")
