"""Audits a SavedModel's graphs, statically, before TensorFlow loads any of it.

`tf.saved_model.load` runs code from the file (resource initializers, the
variable restore), and calling a policy's functions runs whatever graph was
saved. `audit()` therefore reads `saved_model.pb` itself: every node of every
MetaGraph and every function in its library, whether reachable from `action`,
a registered function, an initializer, a signature or nothing at all. Each op
type must be on an allow-list of ops with no effect outside the TensorFlow
runtime (math, NN, control flow, random, variables, tensor plumbing,
in-memory strings and tables). The only exception is the checkpoint I/O of
the SavedModel's own saver (`saver_def`), which the loader uses to restore
the variables, and only where its paths are the loader's: in the functions
only the saver reaches, a `RestoreV2` (restore side) or `SaveV2` /
`MergeV2Checkpoints` (save side, which loading never runs) is allowed when
every path it touches is the saver's filename argument, passed down through
calls, or that filename with constant suffixes that cannot climb out of it
(`_temp/part`, shard names). A path from a constant, from any other
computation or from another argument is refused, as is any write on the
restore side. Anything else is refused, naming the function (by its
object-graph path, e.g. `action`, `leak`, `sneaky/_initialize`) and the
ops, unless the caller opted in.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Dict, Iterable, List, Optional, Set, Tuple

from tensorflow.core.protobuf import saved_model_pb2


class UnsafeGraphError(ValueError):
  """A SavedModel uses ops outside the allow-list (see `graph_audit`)."""


def _names(text: str) -> frozenset:
  return frozenset(text.split())


# Ops known to have no effect outside the TensorFlow runtime, by family.
ALLOWED_FAMILIES: Dict[str, frozenset] = {
    "math": _names("""
        Abs Acos Acosh Add AddN AddV2 All Any ApproximateEqual ArgMax ArgMin Asin Asinh Atan
        Atan2 Atanh BatchMatMul BatchMatMulV2 BatchMatMulV3 Betainc BitwiseAnd BitwiseOr
        BitwiseXor Bucketize Ceil Cholesky ClipByValue Complex ComplexAbs Conj Cos Cosh Cross
        Cumprod Cumsum CumulativeLogsumexp Digamma Div DivNoNan Einsum Equal Erf Erfc Erfinv
        EuclideanNorm Exp Expm1 Floor FloorDiv FloorMod Greater GreaterEqual Igamma Igammac
        IgammaGradA Imag InTopKV2 Inv Invert IsFinite IsInf IsNan LeftShift Less LessEqual
        Lgamma LinSpace Log Log1p LogMatrixDeterminant LogicalAnd LogicalNot LogicalOr
        LowerBound MatMul MatrixBandPart MatrixDeterminant MatrixDiag MatrixDiagPart
        MatrixDiagPartV2 MatrixDiagPartV3 MatrixDiagV2 MatrixDiagV3 MatrixInverse
        MatrixSetDiag MatrixSetDiagV2 MatrixSetDiagV3 MatrixSolve MatrixTriangularSolve Max
        Maximum Mean Min Minimum Mod Mul MulNoNan Ndtri Neg NextAfter NotEqual
        PopulationCount Polygamma Pow Prod Qr Real RealDiv Reciprocal RightShift Rint Round
        Rsqrt SegmentMax SegmentMean SegmentMin SegmentProd SegmentSum SelfAdjointEigV2
        Sigmoid Sign Sin Sinh Sqrt Square SquaredDifference Sub Sum Svd Tan Tanh TopKV2
        TruncateDiv TruncateMod UnsortedSegmentMax UnsortedSegmentMin UnsortedSegmentProd
        UnsortedSegmentSum UpperBound Xdivy Xlog1py Xlogy Zeta
        """),
    "nn": _names("""
        AvgPool AvgPool3D BiasAdd BiasAddV1 BlockLSTM BlockLSTMV2 Conv2D Conv2DBackpropInput
        Conv3D Conv3DBackpropInputV2 CropAndResize DepthwiseConv2dNative Dilation2D Elu
        ExtractImagePatches FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 GRUBlockCell
        L2Loss LRN LSTMBlockCell LeakyRelu LogSoftmax MaxPool MaxPool3D MaxPoolV2 Relu Relu6
        ResizeArea ResizeBicubic ResizeBilinear ResizeNearestNeighbor Selu Softmax
        SoftmaxCrossEntropyWithLogits Softplus Softsign SparseSoftmaxCrossEntropyWithLogits
        """),
    "control flow": _names("""
        Assert Case CheckNumerics CheckNumericsV2 Enter EnsureShape Exit If LoopCond Merge
        NextIteration NoOp PartitionedCall StatefulPartitionedCall StatelessCase StatelessIf
        StatelessWhile StopGradient PreventGradient Switch While
        """),
    "random": _names("""
        Multinomial NonDeterministicInts ParameterizedTruncatedNormal RandomGamma
        RandomGammaGrad RandomPoisson RandomPoissonV2 RandomShuffle RandomStandardNormal
        RandomUniform RandomUniformInt RngReadAndSkip RngSkip StatefulRandomBinomial
        StatefulStandardNormalV2 StatefulTruncatedNormal StatefulUniform
        StatefulUniformFullInt StatefulUniformInt StatelessMultinomial
        StatelessParameterizedTruncatedNormal StatelessRandomBinomial StatelessRandomGammaV2
        StatelessRandomGammaV3 StatelessRandomGetAlg StatelessRandomGetKeyCounter
        StatelessRandomGetKeyCounterAlg StatelessRandomNormal StatelessRandomNormalV2
        StatelessRandomPoisson StatelessRandomUniform StatelessRandomUniformFullInt
        StatelessRandomUniformFullIntV2 StatelessRandomUniformInt StatelessRandomUniformIntV2
        StatelessRandomUniformV2 StatelessShuffle StatelessTruncatedNormal
        StatelessTruncatedNormalV2 TruncatedNormal
        """),
    "variables": _names("""
        Assign AssignAdd AssignAddVariableOp AssignSub AssignSubVariableOp AssignVariableOp
        DestroyResourceOp DisableCopyOnRead IsVariableInitialized ReadVariableOp
        ResourceGather ResourceGatherNd ResourceScatterAdd ResourceScatterUpdate
        VarHandleOp VarIsInitializedOp Variable VariableShape VariableV2
        """),
    "tensor plumbing": _names("""
        BatchToSpaceND Bitcast BroadcastArgs BroadcastGradientArgs BroadcastTo Cast Concat
        ConcatOffset ConcatV2 Const DepthToSpace Diag DiagPart DynamicPartition
        DynamicStitch Empty EmptyTensorList ExpandDims Fill Gather GatherNd GatherV2
        Identity IdentityN InvertPermutation ListDiff MirrorPad OneHot OnesLike Pack Pad
        PadV2 ParallelDynamicStitch Placeholder PlaceholderWithDefault Range Rank Reshape
        Reverse ReverseSequence ReverseV2 ScatterNd Select SelectV2 Shape ShapeN Size Slice
        SpaceToBatchND SpaceToDepth Split SplitV Squeeze StridedSlice TensorArrayCloseV3
        TensorArrayConcatV3 TensorArrayGatherV3 TensorArrayReadV3 TensorArrayScatterV3
        TensorArraySizeV3 TensorArraySplitV3 TensorArrayV3 TensorArrayWriteV3
        TensorListConcatV2 TensorListElementShape TensorListFromTensor TensorListGather
        TensorListGetItem TensorListLength TensorListPopBack TensorListPushBack
        TensorListReserve TensorListResize TensorListScatterIntoExistingList
        TensorListScatterV2 TensorListSetItem TensorListSplit TensorListStack
        TensorScatterAdd TensorScatterUpdate Tile Transpose ConjugateTranspose Unique
        UniqueV2 UniqueWithCounts Unpack Where ZerosLike
        SparseFillEmptyRows SparseReshape SparseSegmentMean SparseSegmentSqrtN
        SparseSegmentSum SparseTensorDenseMatMul SparseToDense
        """),
    "strings and tables": _names("""
        AsString DecodeBase64 EncodeBase64 Fingerprint HashTableV2 InitializeTableV2
        LookupTableExportV2 LookupTableFindV2 LookupTableImportV2 LookupTableInsertV2
        LookupTableSizeV2 MutableHashTableV2 ReduceJoin RegexFullMatch RegexReplace
        StaticRegexFullMatch StaticRegexReplace StringFormat StringJoin StringLength
        StringLower StringSplitV2 StringStrip StringToHashBucket StringToHashBucketFast
        StringToHashBucketStrong StringToNumber StringUpper Substr
        """),
}

# Checkpoint I/O, allowed only where the SavedModel's own saver runs it.
SAVER_OPS = _names("""
    MergeV2Checkpoints Restore RestoreSlice RestoreV2 Save SaveSlices SaveV2 ShardedFilename
    ShardedFilespec
    """)

ALLOWED_OPS = frozenset().union(*ALLOWED_FAMILIES.values())

# Families of refused ops, to say what a refused op does.
UNSAFE_FAMILIES: Dict[str, re.Pattern] = {
    "file system": re.compile(
        r"^(ReadFile|WriteFile|MatchingFiles|DeleteFile|FileSystemSetConfiguration|"
        r"ImmutableConst|InitializeTableFromTextFile(V2)?|LoadAndRemapMatrix|"
        r"GenerateVocabRemapping|.*Reader(V2)?|.*Summary.*|ImportEvent|DecodeProtoV2|"
        r"EncodeProto|PrintV2|Print|DebugIdentity.*|DebugNumericSummary.*|DebugNanCount|"
        r"Copy|CopyHost|.*Checkpoints?|Save.*|Restore.*|ShardedFile.*)$"),
    "datasets": re.compile(r"Dataset|Iterator|DataService|Snapshot|^Optional"),
    "network": re.compile(r"^(Rpc.*|TryRpc|.*Gcs.*|BigQuery.*|Collective.*|.*Send|.*Recv|"
                          r".*Nccl.*)$"),
    "python": re.compile(r"^(PyFunc|PyFuncStateless|EagerPyFunc)$"),
}

RANDOM_OPS = ALLOWED_FAMILIES["random"]


def family(op_type: str) -> str:
  """The family of an op type: an allowed family, an unsafe family, or "not allow-listed"."""
  for name, ops in ALLOWED_FAMILIES.items():
    if op_type in ops:
      return name
  if op_type in SAVER_OPS:
    return "checkpoint I/O"
  for name, pattern in UNSAFE_FAMILIES.items():
    if pattern.search(op_type):
      return name
  return "not allow-listed"


def families(ops: Iterable[str]) -> Dict[str, Set[str]]:
  """Groups op types by family."""
  result: Dict[str, Set[str]] = {}
  for op in ops:
    result.setdefault(family(op), set()).add(op)
  return result


@dataclasses.dataclass
class AuditReport:
  """What `audit()` found.

  ops_by_function: display name -> every op type it can run (its own and
    those of the functions it calls). Names are object-graph paths
    ("action", "get_initial_state", "leak", "resource/_initialize"),
    signatures ("signature 'action'"), "saver", or, for functions nothing
    names, their library name.
  refused: display name -> op types outside the allow-list.
  """
  ops_by_function: Dict[str, Set[str]]
  refused: Dict[str, Set[str]]

  def all_ops(self) -> Set[str]:
    return set().union(*self.ops_by_function.values()) if self.ops_by_function else set()


def op_types(concrete_function) -> Set[str]:
  """Op types a live concrete function can run: its own and those of every function it calls."""
  library = {f.signature.name: f
             for f in concrete_function.graph.as_graph_def().library.function}
  function_def = concrete_function.function_def
  library[function_def.signature.name] = function_def
  direct = _direct_ops(library)
  return set().union(*(direct[f] for f in _reachable(library, [function_def.signature.name])))


def sampled_outputs(concrete_function) -> Tuple[bool, ...]:
  """For each flat output of a live concrete function: whether it depends on a random op.

  Follows data dependencies (not control dependencies) through every function
  call (`PartitionedCall`, `StatefulPartitionedCall`, library functions called
  as ops), output by output. Any other op that runs functions (While, If,
  Case) counts as random if one of its functions can run a random op.

  Randomness can also flow through variable state: a policy that assigns a
  random value to a variable and reads it back (DDPG's Ornstein-Uhlenbeck
  noise) samples, though no data edge links the two. Where the graph assigns
  a random value to any variable, every variable read counts as random too
  (which variable a handle is cannot be told inside the functions), so such
  a policy's outputs that read variables are sampled.
  """
  library = {f.signature.name: f
             for f in concrete_function.graph.as_graph_def().library.function}
  function_def = concrete_function.function_def
  library[function_def.signature.name] = function_def
  name = function_def.signature.name
  analysis = _OutputDependencies(library)
  outputs = analysis.of(name)
  if analysis.random_assigns:
    outputs = _OutputDependencies(library, reads_are_random=True).of(name)
  return tuple(random for random, _ in outputs)


class _OutputDependencies:
  """Per function output: (depends on a random op inside, indices of the inputs it reads)."""

  _CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
  _ASSIGNS = frozenset({"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp"})
  _READS = frozenset({"ReadVariableOp", "ResourceGather", "ResourceGatherNd"})

  def __init__(self, library: Dict[str, object], reads_are_random: bool = False):
    self._library = library
    self._direct = _direct_ops(library)
    self._summaries: Dict[str, list] = {}
    self._may_sample: Dict[str, bool] = {}
    self._reads_are_random = reads_are_random
    self.random_assigns = False   # a random value was assigned to a variable (seen so far)

  def of(self, name: str) -> list:
    """(random, input indices) per output of library function `name`."""
    if name not in self._summaries:
      function = self._library[name]
      args = {a.name: i for i, a in enumerate(function.signature.input_arg)}
      nodes = {n.name: n for n in function.node_def}
      results: Dict[str, object] = {}
      for ref in function.ret.values():
        self._resolve(ref.split(":")[0], args, nodes, results)
      # Nodes no output reads (a state update run for its effect) still count for
      # random_assigns.
      for node in function.node_def:
        if node.op in self._ASSIGNS:
          self._resolve(node.name, args, nodes, results)
      self._summaries[name] = [
          self._lookup(function.ret[a.name], args, nodes, results)
          for a in function.signature.output_arg]
    return self._summaries[name]

  def _may_run_random(self, name: str) -> bool:
    if name not in self._may_sample:
      self._may_sample[name] = any(
          self._direct[f] & RANDOM_OPS for f in _reachable(self._library, [name]))
    return self._may_sample[name]

  def _callee(self, node) -> Optional[str]:
    if node.op in self._library:
      return node.op
    if node.op in self._CALL_OPS and node.attr["f"].func.name in self._library:
      return node.attr["f"].func.name
    return None

  def _resolve(self, root: str, args: dict, nodes: dict, results: dict) -> None:
    """Fills `results[node]` for `root` and what it reads, inputs first (no recursion)."""
    stack = [(root, False)]
    while stack:
      name, ready = stack.pop()
      if name in results or name in args or name not in nodes:
        continue
      node = nodes[name]
      data = [i for i in node.input if not i.startswith("^")]
      if not ready:
        stack.append((name, True))
        stack.extend((i.split(":")[0], False) for i in data)
        continue
      inputs = [self._lookup(i, args, nodes, results) for i in data]
      callee = self._callee(node)
      if node.op in self._ASSIGNS and len(inputs) > 1 and inputs[1][0]:
        self.random_assigns = True
      if callee is None:   # an op: each output reads every input
        random = node.op in RANDOM_OPS or any(
            self._may_run_random(f) for f in _called_functions(node, self._library)) or (
                self._reads_are_random and node.op in self._READS)
        reads: Set[int] = set()
        for r, ins in inputs:
          random, reads = random or r, reads | ins
        results[name] = (random, frozenset(reads))
      else:                # a call: output by output, through the callee
        per_output = []
        for random, reads in self.of(callee):
          mine: Set[int] = set()
          for j in reads:
            if j < len(inputs):
              random, mine = random or inputs[j][0], mine | inputs[j][1]
          per_output.append((random, frozenset(mine)))
        results[name] = per_output

  def _lookup(self, ref: str, args: dict, nodes: dict, results: dict) -> tuple:
    parts = ref.split(":")
    if len(parts) == 1 and parts[0] in args:
      return False, frozenset({args[parts[0]]})
    result = results.get(parts[0], (False, frozenset()))
    if isinstance(result, tuple):
      return result
    node = nodes[parts[0]]
    if node.op in self._library:   # "node:output_arg:index"
      names = [a.name for a in self._library[node.op].signature.output_arg]
      position = names.index(parts[1]) if len(parts) > 1 and parts[1] in names else 0
    else:                          # PartitionedCall: "node:output:index"
      position = int(parts[2]) if len(parts) > 2 else 0
    return result[position] if position < len(result) else (True, frozenset())


def _direct_ops(library: Dict[str, object]) -> Dict[str, Set[str]]:
  """Function name -> the op types of its own nodes (calls of other functions excluded)."""
  return {name: {n.op for n in f.node_def if n.op not in library} for name, f in library.items()}


def _reachable(library: Dict[str, object], starts: Iterable[str]) -> Set[str]:
  """The library functions `starts` name, and every function they call, transitively."""
  found: Set[str] = set()
  pending = [s for s in starts if s in library]
  while pending:
    name = pending.pop()
    if name in found:
      continue
    found.add(name)
    for node in library[name].node_def:
      pending.extend(_called_functions(node, library))
  return found


def _called_functions(node, library: Dict[str, object]) -> List[str]:
  names = [node.op]
  for attr in node.attr.values():
    if attr.HasField("func"):
      names.append(attr.func.name)
    names.extend(f.name for f in attr.list.func)
  return [n for n in names if n in library]


def _node_name(tensor_name: str) -> str:
  return tensor_name.lstrip("^").split(":")[0]


def _object_graph_roots(meta_graph) -> Dict[str, List[str]]:
  """Object-graph path -> concrete function names, shortest path first."""
  nodes = meta_graph.object_graph_def.nodes
  roots: Dict[str, List[str]] = {}
  if not nodes:
    return roots
  seen = {0}
  queue = collections.deque([(0, "")])
  while queue:
    index, path = queue.popleft()
    node = nodes[index]
    kind = node.WhichOneof("kind")
    functions = []
    if kind == "function":
      functions = list(node.function.concrete_functions)
    elif kind == "bare_concrete_function":
      functions = [node.bare_concrete_function.concrete_function_name]
    if functions and path:
      roots.setdefault(path, []).extend(functions)
    for child in node.children:
      if child.node_id not in seen and child.node_id < len(nodes):
        seen.add(child.node_id)
        queue.append((child.node_id, f"{path}/{child.local_name}" if path else child.local_name))
  return roots


def _saver_nodes(graph_def, saver_def) -> Set[str]:
  """Graph nodes that only serve the saver: its save/restore nodes and their inputs."""
  by_name = {n.name: n for n in graph_def.node}
  pending = [_node_name(t) for t in (saver_def.save_tensor_name, saver_def.restore_op_name) if t]
  found: Set[str] = set()
  while pending:
    name = pending.pop()
    if name in found or name not in by_name:
      continue
    found.add(name)
    pending.extend(_node_name(i) for i in by_name[name].input)
  return found


def audit(proto: saved_model_pb2.SavedModel, model_path: str,
          allow_unsafe_ops: bool) -> AuditReport:
  """Audits every graph and function of a parsed SavedModel.

  Raises:
    UnsafeGraphError: an op outside the allow-list and no `allow_unsafe_ops`.
  """
  ops_by_function: Dict[str, Set[str]] = {}
  refused: Dict[str, Set[str]] = {}
  for meta_graph in proto.meta_graphs:
    _audit_meta_graph(meta_graph, ops_by_function, refused)
  report = AuditReport(ops_by_function, refused)
  if refused and not allow_unsafe_ops:
    problems = []
    for name, ops in sorted(refused.items()):
      for fam, found in sorted(families(ops).items()):
        where = " on paths other than the loader's filename" if fam == "checkpoint I/O" else ""
        problems.append(f"{_describe(name)} uses {fam} ops ({', '.join(sorted(found))}){where}")
    raise UnsafeGraphError(
        f"refusing to load {model_path}: " + "; ".join(problems) +
        ". Nothing from it was run. Pass allow_unsafe_ops=True if you trust this SavedModel.")
  return report


def _describe(name: str) -> str:
  if name.startswith(("signature ", "graph node ", "library function ")) or name == "saver":
    return name
  return f"function '{name}'"


def _audit_meta_graph(meta_graph, ops_by_function, refused) -> None:
  graph_def = meta_graph.graph_def
  library = {f.signature.name: f for f in graph_def.library.function}
  saver_nodes = _saver_nodes(graph_def, meta_graph.saver_def)

  # Roots: named entry points and the function names each starts from.
  roots: Dict[str, List[str]] = dict(_object_graph_roots(meta_graph))
  nodes_by_name = {n.name: n for n in graph_def.node}
  for key, signature in meta_graph.signature_def.items():
    called = []
    for tensor in signature.outputs.values():
      node = nodes_by_name.get(_node_name(tensor.name))
      if node is not None:
        called += _called_functions(node, library)
    if called:
      roots.setdefault(f"signature '{key}'", []).extend(called)

  # Functions the saver reaches, and those anything else reaches.
  saver_starts, other_starts = [], []
  for node in graph_def.node:
    (saver_starts if node.name in saver_nodes else other_starts).extend(
        _called_functions(node, library))
  for functions in roots.values():
    other_starts.extend(functions)
  saver_only = _reachable(library, saver_starts) - _reachable(library, other_starts)

  safe_io = _loader_path_checkpoint_io(meta_graph, library)

  def bad(node, function: str) -> bool:
    if node.op in ALLOWED_OPS or node.op in library:
      return False
    return not (node.op in SAVER_OPS and (function, node.name) in safe_io and
                (function == "" or function in saver_only))

  direct_ops = _direct_ops(library)
  direct_bad = {name: {n.op for n in f.node_def if bad(n, name)}
                for name, f in library.items()}

  # Each function is reported under the first (shortest) name that reaches it.
  owner: Dict[str, str] = {}
  for root, starts in roots.items():
    reach = _reachable(library, starts)
    ops_by_function.setdefault(root, set()).update(*(direct_ops[f] for f in reach))
    for f in reach:
      owner.setdefault(f, root)

  # Graph nodes: TF1-style graphs, the saver, and the signatures' call nodes.
  saver_ops: Set[str] = set()
  for node in graph_def.node:
    in_saver = node.name in saver_nodes
    name = "saver" if in_saver else f"graph node '{node.name}'"
    reach = _reachable(library, _called_functions(node, library))
    for f in reach:
      owner.setdefault(f, name)
    own = {node.op} - set(library)
    if in_saver:
      saver_ops |= own.union(*(direct_ops[f] for f in reach))
    own_bad = {node.op} if bad(node, "") else set()
    if own_bad:
      refused.setdefault(name, set()).update(own_bad)
  if saver_ops:
    ops_by_function.setdefault("saver", set()).update(saver_ops)

  for f, ops in direct_bad.items():
    if ops:
      refused.setdefault(owner.get(f, f"library function '{f}'"), set()).update(ops)


# Checkpoint ops by side, and which of their inputs are paths.
_RESTORE_IO = {"RestoreV2": (0,), "Restore": (0,), "RestoreSlice": (0,),
               "ShardedFilename": (0,), "ShardedFilespec": (0,)}
_SAVE_IO = dict(_RESTORE_IO, SaveV2=(0,), Save=(0,), SaveSlices=(0,),
                MergeV2Checkpoints=(0, 1))
_PATH, _SUFFIX = "path", "suffix"


def _loader_path_checkpoint_io(meta_graph, library) -> Set[Tuple[str, str]]:
  """(function name or "" for the graph, node name) of the saver's checkpoint ops whose
  every path is the loader's filename (see the module docstring); none that fail anywhere."""
  saver_def = meta_graph.saver_def
  graph_def = meta_graph.graph_def
  filename = _node_name(saver_def.filename_tensor_name)
  checked: Set[Tuple[str, str]] = set()
  failed: Set[Tuple[str, str]] = set()
  done: Set[Tuple[str, frozenset, bool]] = set()
  graph_nodes = {n.name: n for n in graph_def.node}

  def walk(function: str, nodes: Dict[str, object], paths: frozenset, allowed: dict) -> None:
    kinds: Dict[str, Optional[str]] = {}
    for node in nodes.values():
      if node.op in SAVER_OPS:
        data = _data_inputs(node)
        ok = node.op in allowed and all(
            i < len(data) and _path_kind(data[i], nodes, paths, kinds) == _PATH
            for i in allowed[node.op])
        (checked if ok else failed).add((function, node.name))
      for callee in _called_functions(node, library):
        callee_def = library[callee]
        arg_paths = frozenset()
        if callee == node.op or node.op in _OutputDependencies._CALL_OPS:
          data = _data_inputs(node)
          arg_paths = frozenset(
              a.name for a, ref in zip(callee_def.signature.input_arg, data)
              if _path_kind(ref, nodes, paths, kinds) == _PATH)
        key = (callee, arg_paths, allowed is _SAVE_IO)
        if key not in done:
          done.add(key)
          walk(callee, {n.name: n for n in callee_def.node_def}, arg_paths, allowed)

  for side, allowed in ((saver_def.restore_op_name, _RESTORE_IO),
                        (saver_def.save_tensor_name, _SAVE_IO)):
    if not side:
      continue
    closure = _saver_nodes(graph_def, type(saver_def)(save_tensor_name=side))
    nodes = {name: graph_nodes[name] for name in closure}
    walk("", nodes, frozenset({filename}) if filename in nodes else frozenset(), allowed)
  return checked - failed


def _data_inputs(node) -> List[str]:
  return [i for i in node.input if not i.startswith("^")]


def _path_kind(ref: str, nodes: Dict[str, object], paths: frozenset,
               kinds: Dict[str, Optional[str]], depth: int = 0) -> Optional[str]:
  """_PATH (the loader's filename, or it with safe suffixes), _SUFFIX (a constant that
  cannot leave a directory) or None, for a tensor reference inside `nodes`."""
  name = _node_name(ref)
  if name in paths:
    return _PATH
  if name in kinds:
    return kinds[name]
  node = nodes.get(name)
  kinds[name] = None          # cycles and unknown nodes are not paths
  if node is None or depth > 64:
    return None
  inputs = [_path_kind(i, nodes, paths, kinds, depth + 1) for i in _data_inputs(node)]
  kind = None
  if node.op == "Const":
    tensor = node.attr["value"].tensor
    if tensor.dtype == 7 and all(b".." not in v for v in tensor.string_val):   # DT_STRING
      kind = _SUFFIX
  elif node.op in ("Identity", "ShardedFilename", "ShardedFilespec") and inputs:
    kind = inputs[0] if node.op == "Identity" else (_PATH if inputs[0] == _PATH else None)
  elif node.op == "StringJoin" and inputs and b".." not in node.attr["separator"].s:
    if all(k in (_PATH, _SUFFIX) for k in inputs) and _PATH not in inputs[1:]:
      kind = inputs[0]
  elif node.op in ("Select", "SelectV2") and len(inputs) == 3 and inputs[1] == inputs[2]:
    kind = inputs[1]
  elif node.op == "Pack" and inputs and all(k == _PATH for k in inputs):
    kind = _PATH
  kinds[name] = kind
  return kind
