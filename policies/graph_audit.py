"""Audits the graphs a policy runs for ops with side effects outside TensorFlow.

Loading a SavedModel and calling its functions runs whatever graph was saved.
`audit()` lists the op types of every function the policy calls (`action`,
`get_initial_state`, `get_train_step`, `get_metadata`, registered functions)
and raises `UnsafeGraphError` when any of them touches the file system, the
network or runs Python, unless the caller opted in.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, Set

# Op families that reach outside the TensorFlow runtime.
UNSAFE_FAMILIES: Dict[str, re.Pattern] = {
    "file system": re.compile(
        r"^(ReadFile|WriteFile|MatchingFiles|DeleteFile|Save|SaveV2|SaveSlices|Restore|RestoreV2|"
        r"RestoreSlice|MergeV2Checkpoints|ImmutableConst|FileSystemSetConfiguration|"
        r"InitializeTableFromTextFile(V2)?|.*Reader(V2)?|.*RecordDataset(V2)?|TextLineDataset|"
        r"DatasetToTFRecord|.*SummaryFileWriter|Write.*Summary|CreateSummaryDbWriter|"
        r"ImportEvent|FlushSummaryWriter|CloseSummaryWriter|LoadAndRemapMatrix|"
        r"GenerateVocabRemapping)$"),
    "network": re.compile(r"^(Rpc|TryRpc|.*GcsConfigure.*|BigQuery.*|Collective.*|.*Send|.*Recv)$"),
    "python": re.compile(r"^(PyFunc|PyFuncStateless|EagerPyFunc)$"),
}

# Other families, only for reporting.
_REPORT_FAMILIES = [
    ("random", re.compile(r"Random|Multinomial|TruncatedNormal|^Stateful(Uniform|StandardNormal)|^Rng")),
    ("variables", re.compile(r"Variable|^VarHandleOp$|^Assign")),
    ("function calls", re.compile(r"PartitionedCall$|^If$|^While$|^StatelessIf$|^StatelessWhile$|^Case$")),
    ("tensor plumbing", re.compile(r"^(Identity|IdentityN|NoOp|Const|Placeholder|Shape|Reshape|"
                                   r"Pack|Unpack|ConcatV2|StridedSlice|Squeeze|ExpandDims|Fill|"
                                   r"Cast|GatherV2|Select(V2)?|Tile|Range|ZerosLike|OnesLike)$")),
]

RANDOM_OPS = _REPORT_FAMILIES[0][1]


class UnsafeGraphError(ValueError):
  """A policy function uses ops that reach outside TensorFlow."""


def op_types(concrete_function) -> Set[str]:
  """Op types a concrete function can run: its own and those of every function it calls."""
  library = {f.signature.name: f
             for f in concrete_function.graph.as_graph_def().library.function}
  types: Set[str] = set()
  seen = set()
  pending = [concrete_function.function_def]
  while pending:
    for node in pending.pop().node_def:
      types.add(node.op)
      called = [node.op] + [attr.func.name for attr in node.attr.values() if attr.HasField("func")]
      called += [f.name for attr in node.attr.values() for f in attr.list.func]
      for name in called:
        if name in library and name not in seen:
          seen.add(name)
          pending.append(library[name])
  return types - set(library)


def family(op_type: str) -> str:
  for name, pattern in UNSAFE_FAMILIES.items():
    if pattern.search(op_type):
      return name
  for name, pattern in _REPORT_FAMILIES:
    if pattern.search(op_type):
      return name
  return "compute"


def families(ops: Iterable[str]) -> Dict[str, Set[str]]:
  """Groups op types by family."""
  result: Dict[str, Set[str]] = {}
  for op in ops:
    result.setdefault(family(op), set()).add(op)
  return result


def audit(functions: Dict[str, list], model_path: str,
          allow_unsafe_ops: bool) -> Dict[str, Set[str]]:
  """{function name: op types} for {name: concrete functions}.

  Raises:
    UnsafeGraphError: a function uses unsafe ops and `allow_unsafe_ops` is False.
  """
  ops_by_function = {}
  for name, concretes in functions.items():
    ops = set()
    for concrete in concretes:
      ops |= op_types(concrete)
    ops_by_function[name] = ops
  if not allow_unsafe_ops:
    problems = []
    for name, ops in sorted(ops_by_function.items()):
      unsafe = {f: sorted(o) for f, o in families(ops).items() if f in UNSAFE_FAMILIES}
      for fam, found in sorted(unsafe.items()):
        problems.append(f"function '{name}' uses {fam} ops ({', '.join(found)})")
    if problems:
      raise UnsafeGraphError(
          f"refusing to load {model_path}: " + "; ".join(problems) +
          ". Pass allow_unsafe_ops=True if you trust this SavedModel.")
  return ops_by_function
