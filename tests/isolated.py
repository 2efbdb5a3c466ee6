"""Hostile cases in child processes, so a crash or a hang is a failure, not a lost run.

`run_cases("module", ["case", ...])` starts one child (`python isolated.py
module`), which imports `module` (a file next to this one) and runs its
functions `case(workdir)` in order, printing one JSON line per case: the
outcome (`"ok"` with the function's return value, or `"raised"` with the
exception's type and first line). The parent reads those lines with a deadline
per case. A child that dies (a signal, an abort) or passes the deadline is
killed, the case on which it did is recorded as `"crashed"` / `"timeout"`, and
a new child goes on with the next case. Every child runs under an address-space
limit, and the parent reads each child's peak RSS from `wait4`.

Children import TF once and run many cases, so a few hundred cases cost seconds,
not a TF import each.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import selectors
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Dict, Optional, Sequence

_MARK = "@@isolated "


@dataclasses.dataclass
class Outcome:
  """What one case did: `kind` is "ok", "raised", "crashed" or "timeout"."""
  case: str
  kind: str
  value: object = None          # "ok": the case's return value (JSON)
  error_type: str = ""          # "raised": the exception class, e.g. "ValueError"
  error_mro: tuple = ()         # "raised": its class names, most derived first
  message: str = ""             # "raised": first line; "crashed": the signal and stderr tail
  seconds: float = 0.0
  child_max_rss_mb: float = 0.0  # peak RSS of the child that ran it (cases share a child)

  def is_error(self, *types: str) -> bool:
    return self.kind == "raised" and bool(set(types) & set(self.error_mro))

  def __str__(self) -> str:
    detail = self.value if self.kind == "ok" else f"{self.error_type}: {self.message}"
    return f"{self.case}: {self.kind} ({detail}) in {self.seconds:.1f}s"


def run_cases(module: str, cases: Sequence[str], timeout: float = 60.0,
              memory_gb: float = 8.0, env: Optional[Dict[str, str]] = None) -> Dict[str, Outcome]:
  """Runs `module.case(workdir)` for each case in child processes (see module docstring).

  `timeout` is per case (the first case also pays the child's imports);
  `memory_gb` bounds each child's address space (RLIMIT_AS; TF reserves
  several GB of address space it never touches, so this is not RSS).
  """
  results: Dict[str, Outcome] = {}
  pending = list(cases)
  while pending:
    results.update(_run_child(module, pending, timeout, memory_gb, env))
    pending = [c for c in pending if c not in results]
  return results


def _run_child(module, cases, timeout, memory_gb, env) -> Dict[str, Outcome]:
  limit = int(memory_gb * 2**30)

  def limits():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

  child_env = dict(os.environ, **(env or {}))
  child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)   # Bazel's runfiles too
  with tempfile.TemporaryDirectory(prefix="isolated_") as workdir, \
      open(os.path.join(workdir, "stderr"), "w+b") as stderr:
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), module, workdir, *cases],
        stdout=subprocess.PIPE, stderr=stderr, preexec_fn=limits, env=child_env,
        cwd=os.getcwd())
    results: Dict[str, Outcome] = {}
    index, started = 0, time.monotonic()
    first_deadline = timeout + 120.0    # the child imports TF before its first case
    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)
    buffer = b""
    while index < len(cases):
      deadline = started + (first_deadline if index == 0 else timeout)
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not selector.select(remaining):
        child.kill()
        _, status, usage = os.wait4(child.pid, 0)
        results[cases[index]] = Outcome(cases[index], "timeout",
                                        seconds=time.monotonic() - started)
        for outcome in results.values():
          outcome.child_max_rss_mb = usage.ru_maxrss / 1024
        return results
      chunk = os.read(child.stdout.fileno(), 1 << 16)
      if not chunk:        # the child is gone
        break
      buffer += chunk
      while b"\n" in buffer:
        line, buffer = buffer.split(b"\n", 1)
        text = line.decode(errors="replace")
        if not text.startswith(_MARK):
          continue
        record = json.loads(text[len(_MARK):])
        results[record["case"]] = Outcome(**record)
        index, started = index + 1, time.monotonic()
    _, status, usage = os.wait4(child.pid, 0)
    rss = usage.ru_maxrss / 1024
    for outcome in results.values():
      outcome.child_max_rss_mb = rss
    if index < len(cases):
      signal_number = -status if status < 0 else (os.WTERMSIG(status) if os.WIFSIGNALED(status)
                                                   else 0)
      how = (f"signal {signal_number}" if signal_number else
             f"exit status {os.WEXITSTATUS(status)}")
      stderr.seek(0)
      results[cases[index]] = Outcome(
          cases[index], "crashed", message=f"{how}: " +
          stderr.read().decode(errors="replace")[-1500:],
          seconds=time.monotonic() - started, child_max_rss_mb=rss)
    return results


def _child(module_name: str, workdir: str, cases: Sequence[str]) -> None:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from tools.fixtures import tf_agents_keras  # pylint: disable=import-outside-toplevel
  tf_agents_keras.select_keras_2()
  module = __import__(module_name)
  out = sys.stdout
  for case in cases:
    casedir = os.path.join(workdir, case.replace("/", "_"))
    os.makedirs(casedir, exist_ok=True)
    started = time.monotonic()
    record = {"case": case}
    try:
      value = getattr(module, case)(casedir)
      record.update(kind="ok", value=value)
    except BaseException as e:  # pylint: disable=broad-except  (the outcome is the point)
      lines = [l for l in str(e).splitlines() if l.strip()]
      record.update(kind="raised", error_type=type(e).__name__,
                    error_mro=[c.__name__ for c in type(e).__mro__],
                    message=lines[0] if lines else "")
      if os.environ.get("ISOLATED_TRACEBACKS"):
        traceback.print_exc()
    record["seconds"] = time.monotonic() - started
    out.write(_MARK + json.dumps(record, default=repr) + "\n")
    out.flush()


if __name__ == "__main__":
  _child(sys.argv[1], sys.argv[2], sys.argv[3:])
