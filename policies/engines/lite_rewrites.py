"""Rewrites of the audited graph so more exports convert with LiteRT builtins only.

They apply to the copy of `saved_model.pb` handed to the converter, never to
the graph TensorFlow runs, and replace ops that have no LiteRT builtin (or that
the converter cannot lower) by builtin ops that compute the same values or
sample from the same distribution (validation then checks them against TF, as
for every output).

  RandomUniformInt(shape, minval, maxval)  (TF-Agents' RandomTFPolicy and
  epsilon-greedy exploration over integer actions) becomes
      minval + min(floor(RandomUniform(shape) * (maxval - minval)),
                   maxval - minval - 1)
  computed in float32: uniform over [minval, maxval) for ranges up to 2**24.

One rewrite is not about sampling: an `Einsum` of two operands whose labels all
appear in one of them (no matrix product, e.g. LinUCB's `j,jk->k` and
`ij,ij->j`) becomes a broadcast `Mul` and a `Sum` over the contracted labels.
The converter lowers such einsums itself only when every shape is static;
per-arm bandits feed them dynamic shapes. Einsums that are matrix products
are left to the converter (expanding them would multiply their memory).

Stateful random ops lose their export-time seeds (`seed`, `seed2` become 0):
LiteRT's kernels then draw each op instance's seed from the OS, so the
interpreters of a pool (and of different processes) sample independently
instead of replaying one stream, as two copies with the export's seeds would.

For exports whose object graph does not decode here (a TypeSpec of a class
this TF does not know, as TF 2.3/2.4 wrote TFP distribution specs, or of a
name this process has not registered), such specs in the object graph's
function signatures become None: the converter decodes the object graph but
only traces `action`.
"""

from __future__ import annotations

from google.protobuf import descriptor
from tensorflow.core.framework import attr_value_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.core.protobuf import struct_pb2
from tensorflow.python.framework import type_spec_registry

from ..saved_model import compat
from ..saved_model import graph_audit

_FLOAT = types_pb2.DT_FLOAT


def for_builtins(saved_model_pb: bytes) -> bytes:
  """`saved_model_pb` with the rewrites above applied (the same bytes if none applies)."""
  proto = saved_model_pb2.SavedModel()
  proto.ParseFromString(saved_model_pb)
  changed = False
  for meta_graph in proto.meta_graphs:
    for function in meta_graph.graph_def.library.function:
      changed |= _rewrite_random_uniform_int(function)
      changed |= _rewrite_elementwise_einsums(function)
      changed |= _unseed(function)
  return proto.SerializeToString() if changed else saved_model_pb


def _unseed(function) -> bool:
  """Sets the seed attributes of stateful random ops to 0 (LiteRT then seeds each op instance,
  so each interpreter, from the OS: pooled interpreters never replay one stream)."""
  changed = False
  for node in function.node_def:
    if node.op in graph_audit.RANDOM_OPS:
      for key in ("seed", "seed2"):
        if key in node.attr and node.attr[key].i != 0:
          node.attr[key].i = 0
          changed = True
  return changed


def without_unknown_type_specs(saved_model_pb: bytes) -> bytes:
  """`saved_model_pb` with unregistered TypeSpecs in its object graph set to None."""
  proto = saved_model_pb2.SavedModel()
  proto.ParseFromString(saved_model_pb)
  changed = False
  for meta_graph in proto.meta_graphs:
    changed |= _drop_unknown_specs(meta_graph.object_graph_def)
  return proto.SerializeToString() if changed else saved_model_pb


_KNOWN_SPEC_CLASSES = frozenset(struct_pb2.TypeSpecProto.TypeSpecClass.values())


def _decodable(spec) -> bool:
  """Whether this TF can decode a TypeSpecProto: a class its enum knows (TF 2.3/2.4 wrote
  TFP's specs as class 275837168, unknown since), and a registered name if it names one."""
  if spec.type_spec_class not in _KNOWN_SPEC_CLASSES:
    return False
  return (spec.type_spec_class != struct_pb2.TypeSpecProto.REGISTERED_TYPE_SPEC or
          _registered(spec.type_spec_class_name))


def _registered(name: str) -> bool:
  try:
    type_spec_registry.lookup(name)
    return True
  except ValueError:
    return False


def _drop_unknown_specs(message) -> bool:
  if isinstance(message, struct_pb2.StructuredValue):
    spec = message.type_spec_value if message.HasField("type_spec_value") else None
    if spec is not None and not _decodable(spec):
      message.Clear()
      message.none_value.SetInParent()
      return True
  changed = False
  for field, value in message.ListFields():
    if field.type != descriptor.FieldDescriptor.TYPE_MESSAGE:
      continue
    if not compat.is_repeated(field):
      changed |= _drop_unknown_specs(value)
    elif field.message_type.GetOptions().map_entry:
      if field.message_type.fields_by_name["value"].type == descriptor.FieldDescriptor.TYPE_MESSAGE:
        for item in value.values():
          changed |= _drop_unknown_specs(item)
    else:
      for item in value:
        changed |= _drop_unknown_specs(item)
  return changed


def _node(function, name: str, op: str, inputs, **attrs):
  node = function.node_def.add(name=name, op=op, input=list(inputs))
  for key, value in attrs.items():
    if isinstance(value, attr_value_pb2.AttrValue):
      node.attr[key].CopyFrom(value)
    else:
      node.attr[key].type = value
  return node


def _rewrite_random_uniform_int(function) -> bool:
  targets = [n for n in function.node_def if n.op == "RandomUniformInt"]
  for old in targets:
    name = old.name
    shape, low, high = old.input[:3]
    controls = [i for i in old.input[3:] if i.startswith("^")]
    out = old.attr["Tout"].type
    function.node_def.remove(old)
    seed_attrs = {k: old.attr[k] for k in ("seed", "seed2") if k in old.attr}
    _node(function, f"{name}/unit", "RandomUniform", [shape] + controls,
          T=old.attr["T"].type, dtype=_FLOAT, **seed_attrs)
    _node(function, f"{name}/low", "Cast", [low], SrcT=out, DstT=_FLOAT)
    _node(function, f"{name}/high", "Cast", [high], SrcT=out, DstT=_FLOAT)
    _node(function, f"{name}/range", "Sub", [f"{name}/high:y:0", f"{name}/low:y:0"], T=_FLOAT)
    _node(function, f"{name}/scaled", "Mul", [f"{name}/unit:output:0", f"{name}/range:z:0"],
          T=_FLOAT)
    _node(function, f"{name}/floor", "Floor", [f"{name}/scaled:z:0"], T=_FLOAT)
    _node(function, f"{name}/one", "Const", [], dtype=_FLOAT, value=_float_scalar(1.0))
    _node(function, f"{name}/top", "Sub", [f"{name}/range:z:0", f"{name}/one:output:0"], T=_FLOAT)
    _node(function, f"{name}/clipped", "Minimum", [f"{name}/floor:y:0", f"{name}/top:z:0"],
          T=_FLOAT)
    _node(function, f"{name}/offset", "Cast", [f"{name}/clipped:z:0"], SrcT=_FLOAT, DstT=out)
    # The sum keeps the old node's name; its output is `z`, not `output`.
    _node(function, name, "AddV2", [f"{name}/offset:y:0", low], T=out)
    old_ref, new_ref = f"{name}:output:0", f"{name}:z:0"
    for node in function.node_def:
      for i, ref in enumerate(node.input):
        if ref == old_ref:
          node.input[i] = new_ref
    for key, ref in function.ret.items():
      if ref == old_ref:
        function.ret[key] = new_ref
  return bool(targets)


def _elementwise_einsum(equation: str):
  """(labels of each operand, output labels) if `equation` is a two-operand einsum whose
  labels all appear in one operand, without ellipses or repeated labels; else None."""
  if "->" not in equation or "." in equation:
    return None
  inputs, output = equation.replace(" ", "").split("->")
  operands = inputs.split(",")
  if len(operands) != 2 or not all(x.isalpha() for x in operands + [output] if x):
    return None
  if any(len(set(x)) != len(x) for x in operands + [output]):
    return None
  every = set(operands[0]) | set(operands[1])
  if not set(output) <= every or not any(set(x) == every for x in operands):
    return None
  return operands, output


def _int_vector(values) -> attr_value_pb2.AttrValue:
  attr = attr_value_pb2.AttrValue()
  attr.tensor.dtype = types_pb2.DT_INT32
  attr.tensor.tensor_shape.dim.add(size=len(values))
  attr.tensor.int_val.extend(values)
  return attr


def _rewrite_elementwise_einsums(function) -> bool:
  targets = []
  for node in function.node_def:
    if node.op == "Einsum" and len([i for i in node.input if not i.startswith("^")]) == 2:
      parsed = _elementwise_einsum(node.attr["equation"].s.decode("ascii", "replace"))
      taken = any(n.name.startswith(node.name + "/as_product/") for n in function.node_def)
      if parsed is not None and not taken:   # the new nodes' names are free
        targets.append((node, parsed))
  for old, (operands, output) in targets:
    name, dtype = old.name, old.attr["T"].type
    new = f"{name}/as_product"
    refs = [i for i in old.input if not i.startswith("^")]
    controls = [i for i in old.input if i.startswith("^")]
    contracted = sorted((set(operands[0]) | set(operands[1])) - set(output))
    order = list(output) + contracted          # the product's axes
    function.node_def.remove(old)
    aligned = []
    for k, (ref, labels) in enumerate(zip(refs, operands)):
      present = [label for label in order if label in labels]
      if present != list(labels):
        _node(function, f"{new}/perm{k}", "Const", controls,
              dtype=types_pb2.DT_INT32, value=_int_vector([labels.index(l) for l in present]))
        _node(function, f"{new}/transpose{k}", "Transpose", [ref, f"{new}/perm{k}:output:0"],
              T=dtype, Tperm=types_pb2.DT_INT32)
        ref = f"{new}/transpose{k}:y:0"
      for axis, label in enumerate(order):
        if label not in labels:
          _node(function, f"{new}/axis{k}_{axis}", "Const", controls,
                dtype=types_pb2.DT_INT32, value=_int_vector([axis]))
          _node(function, f"{new}/expand{k}_{axis}", "ExpandDims",
                [ref, f"{new}/axis{k}_{axis}:output:0"], T=dtype, Tdim=types_pb2.DT_INT32)
          ref = f"{new}/expand{k}_{axis}:output:0"
      aligned.append(ref)
    _node(function, f"{new}/product", "Mul", aligned + controls, T=dtype)
    result = f"{new}/product:z:0"
    if contracted:
      _node(function, f"{new}/axes", "Const", controls, dtype=types_pb2.DT_INT32,
            value=_int_vector(list(range(len(output), len(order)))))
      summed = _node(function, f"{new}/sum", "Sum", [result, f"{new}/axes:output:0"],
                     T=dtype, Tidx=types_pb2.DT_INT32)
      summed.attr["keep_dims"].b = False
      result = f"{new}/sum:output:0"
    # The einsum's name and output (`output`) stay, so nothing that reads it changes.
    _node(function, name, "Identity", [result], T=dtype)
  return bool(targets)


def _float_scalar(value: float) -> attr_value_pb2.AttrValue:
  attr = attr_value_pb2.AttrValue()
  attr.tensor.dtype = _FLOAT
  attr.tensor.tensor_shape.SetInParent()
  attr.tensor.float_val.append(value)
  return attr
