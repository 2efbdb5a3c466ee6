"""Loads a compiled directory's LiteRT model once in a child process before this one does.

LiteRT's kernels trust the flatbuffer: a model that passes every structural
check (`lite_checks`) can still crash them while tensors are allocated (random
byte flips under a forged manifest do, about 6 in 100,000). So the first time a
process meets a flatbuffer, a child (`python -c "import ...lite_preflight"`)
builds the same `LiteModel` (the interpreter's allocation and one run, and the
native engine's compiled model) and exits; a crash or a hang there is a
ValueError here, and this process never loads that model. (`compiled.py`
remembers the flatbuffers that passed every check, this one included.)

`POLICY_RUNTIME_PREFLIGHT=0` turns it off (trusted directories, the fastest load).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

ENV = "POLICY_RUNTIME_PREFLIGHT"
TIMEOUT_S = 60.0


def check(flatbuffer: bytes, input_names, output_names, first_batch: int, num_threads: int,
          what: str) -> None:
  """Raises ValueError naming `what` if loading the model kills or hangs a child process."""
  if os.environ.get(ENV, "1") == "0":
    return
  request = pickle.dumps((flatbuffer, list(input_names), list(output_names), first_batch,
                          num_threads), protocol=pickle.HIGHEST_PROTOCOL)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
  try:
    done = subprocess.run([sys.executable, "-c", f"import {__name__} as m; m.main()"],
                          input=request, capture_output=True, timeout=TIMEOUT_S, env=env,
                          check=False)
  except subprocess.TimeoutExpired:
    raise ValueError(f"{what}: the LiteRT model did not load within {TIMEOUT_S:g} s "
                     f"(in a child process)") from None
  if done.returncode < 0:
    raise ValueError(f"{what}: the LiteRT model crashes LiteRT when loaded "
                     f"(a child process died of signal {-done.returncode})")
  # A child that raised (exit status 1) is not ours to judge: this process loads the
  # model and raises the same error as a ValueError.


def main() -> None:
  """The child: loads the model it is sent, as the parent would, then exits."""
  import resource  # pylint: disable=import-outside-toplevel
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  from . import lite_model  # pylint: disable=import-outside-toplevel
  flatbuffer, input_names, output_names, first_batch, num_threads = pickle.loads(
      sys.stdin.buffer.read())   # from our own parent
  lite_model.LiteModel(flatbuffer, input_names, output_names, first_batch,
                       num_threads=num_threads)
