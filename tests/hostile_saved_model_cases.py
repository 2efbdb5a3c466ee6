"""Hostile SavedModel directories, one function `case(workdir)` each, run by `isolated.py`.

Each case builds its directory from the embedded default policy (forging
`saved_model.pb` as a protobuf with `hostile_models`, or planting files) and
loads it. A case returns what the load did (the backend in use, peak RSS) or
raises; `hostile_saved_model_test.py` judges the outcomes. `fuzz_N` are
protobuf-level mutations of saved_model.pb, seeded by N.
"""

from __future__ import annotations

import functools
import os
import random
import resource
import shutil

import numpy as np

from tools.cli import policy_cli

SOURCE = policy_cli.DEFAULT_POLICY
SHARD = "variables/variables.data-00000-of-00001"


# Set by the `tf_agents__<case>` names: load with TF-Agents' own class instead (the
# comparison in docs/untrusted_inputs.md, //tests:hostile_saved_model_tf_agents).
_WITH_TF_AGENTS = []


def _policy(path, backend="tf", workdir=None):
  if _WITH_TF_AGENTS:
    from tf_agents.policies import py_tf_eager_policy  # pylint: disable=import-outside-toplevel
    return py_tf_eager_policy.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  from policy_runtime.policies import SavedModelPyTFEagerPolicy  # pylint: disable=import-outside-toplevel
  cache = os.path.join(workdir or path, "cache")
  return SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend=backend,
                                   lite_cache_dir=cache)


def _copy(workdir) -> str:
  target = os.path.join(workdir, "policy")
  shutil.copytree(SOURCE, target)
  return target


def _result(policy) -> dict:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  time_step = tf.nest.map_structure(lambda s: np.zeros(s.shape, s.dtype), policy.time_step_spec)
  step = policy.action(time_step, policy.get_initial_state())
  return {"backend": getattr(policy, "backend", "tf-agents"),
          "action": np.asarray(step.action).tolist(),
          "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# -- Files nobody references -------------------------------------------------------


def fifo_in_variables(workdir):
  path = _copy(workdir)
  os.mkfifo(os.path.join(path, "variables", "junk"))
  return _result(_policy(path))


def fifo_in_assets(workdir):
  path = _copy(workdir)
  os.makedirs(os.path.join(path, "assets"))
  os.mkfifo(os.path.join(path, "assets", "pipe"))
  return _result(_policy(path))


def dev_zero_link_in_variables(workdir):
  path = _copy(workdir)
  os.symlink("/dev/zero", os.path.join(path, "variables", "zero"))
  return _result(_policy(path))


def sparse_gib_in_variables(workdir):
  path = _copy(workdir)
  with open(os.path.join(path, "variables", "big"), "wb") as f:
    f.truncate(2**30)
  return _result(_policy(path))


def sparse_gib_in_assets(workdir):
  path = _copy(workdir)
  os.makedirs(os.path.join(path, "assets"))
  with open(os.path.join(path, "assets", "big"), "wb") as f:
    f.truncate(2**30)
  return _result(_policy(path))


# -- Referenced files that are not regular files -----------------------------------


def fifo_as_shard(workdir):
  path = _copy(workdir)
  os.remove(os.path.join(path, SHARD))
  os.mkfifo(os.path.join(path, SHARD))
  return _result(_policy(path))


def dev_zero_as_shard(workdir):
  path = _copy(workdir)
  os.remove(os.path.join(path, SHARD))
  os.symlink("/dev/zero", os.path.join(path, SHARD))
  return _result(_policy(path))


def fifo_as_index(workdir):
  path = _copy(workdir)
  os.remove(os.path.join(path, "variables/variables.index"))
  os.mkfifo(os.path.join(path, "variables/variables.index"))
  return _result(_policy(path))


def fifo_as_saved_model(workdir):
  path = _copy(workdir)
  os.remove(os.path.join(path, "saved_model.pb"))
  os.mkfifo(os.path.join(path, "saved_model.pb"))
  return _result(_policy(path))


def symlink_shard_to_regular(workdir):
  """A symlink to a regular file is followed (a Bazel runfiles tree is all symlinks)."""
  path = _copy(workdir)
  real = os.path.join(workdir, "real_shard")
  shutil.move(os.path.join(path, SHARD), real)
  os.symlink(real, os.path.join(path, SHARD))
  return _result(_policy(path))


def checkpoint_with_fifo_shard(workdir):
  path = _copy(workdir)
  policy = _policy(path)
  checkpoint = os.path.join(workdir, "checkpoint_0001")
  os.makedirs(os.path.join(checkpoint, "variables"))
  shutil.copy(os.path.join(path, "variables/variables.index"),
              os.path.join(checkpoint, "variables/variables.index"))
  os.mkfifo(os.path.join(checkpoint, SHARD))
  policy.update_from_checkpoint(checkpoint)
  return _result(policy)


def checkpoint_with_junk_beside(workdir):
  path = _copy(workdir)
  policy = _policy(path)
  checkpoint = os.path.join(workdir, "checkpoint_0002")
  shutil.copytree(os.path.join(path, "variables"), os.path.join(checkpoint, "variables"))
  os.mkfifo(os.path.join(checkpoint, "variables", "pipe"))
  os.symlink("/dev/zero", os.path.join(checkpoint, "variables", "zero"))
  policy.update_from_checkpoint(checkpoint)
  return _result(policy)


# -- Signature dtypes the converter keeps ------------------------------------------


def _string_input(workdir) -> str:
  import hostile_models  # pylint: disable=import-outside-toplevel
  from tensorflow.core.framework import types_pb2  # pylint: disable=import-outside-toplevel
  proto = hostile_models.read(SOURCE)
  signature = proto.meta_graphs[0].signature_def["action"]
  name = sorted(k for k in signature.inputs if "observation" in k)[0]
  signature.inputs[name].dtype = types_pb2.DT_STRING
  return hostile_models.write(SOURCE, os.path.join(workdir, "policy"), proto)


def string_input_tf(workdir):
  return _result(_policy(_string_input(workdir)))


def string_input_lite(workdir):
  return _result(_policy(_string_input(workdir), "lite", workdir))


def string_input_auto(workdir):
  return _result(_policy(_string_input(workdir), "auto", workdir))




# -- Protobuf-aware fuzz of saved_model.pb -----------------------------------------

_DTYPES = [1, 2, 3, 4, 5, 6, 7, 9, 10, 14, 19, 20, 21, 23]   # float..variant, resource


def _mutate(proto, rng: random.Random) -> str:
  """One mutation of `proto` in place; returns what it did."""
  meta_graph = proto.meta_graphs[0]
  kind = rng.choice(["signature dtype", "signature shape", "signature binding",
                     "node attr type", "node input", "node op", "object child",
                     "function arg dtype", "concrete function spec"])
  if kind.startswith("signature"):
    signature = meta_graph.signature_def[rng.choice(sorted(meta_graph.signature_def))]
    side = signature.inputs if rng.random() < 0.6 or not signature.outputs else signature.outputs
    if not side:
      side = signature.outputs or signature.inputs
    if not side:
      return "no-op"
    info = side[rng.choice(sorted(side))]
    if kind == "signature dtype":
      info.dtype = rng.choice(_DTYPES)
    elif kind == "signature shape":
      info.tensor_shape.Clear()
      for _ in range(rng.randrange(0, 4)):
        info.tensor_shape.dim.add(size=rng.choice([-1, 0, 1, 2, 7, 2**31, -5]))
      if rng.random() < 0.2:
        info.tensor_shape.unknown_rank = True
    else:
      info.name = rng.choice([info.name + "x", "", "0", "nope:0", info.name.split(":")[0] + ":7"])
  elif kind in ("node attr type", "node input", "node op"):
    functions = meta_graph.graph_def.library.function
    function = rng.choice(functions)
    if not function.node_def:
      return "no-op"
    node = rng.choice(function.node_def)
    if kind == "node attr type":
      keys = [k for k in node.attr if node.attr[k].WhichOneof("value") == "type"]
      if keys:
        node.attr[rng.choice(keys)].type = rng.choice(_DTYPES)
      elif node.attr:
        key = rng.choice(sorted(node.attr))
        node.attr[key].Clear() if rng.random() < 0.5 else node.attr[key].i.__class__  # noqa
        node.attr[key].i = rng.choice([-1, 0, 2**40])
    elif kind == "node input":
      if node.input and rng.random() < 0.5:
        del node.input[rng.randrange(len(node.input))]
      else:
        other = rng.choice(function.node_def)
        node.input.append(f"{other.name}:output:{rng.randrange(3)}")
    else:
      node.op = rng.choice(["Identity", "AddV2", "Cast", "Const", "NoOp", "ZerosLike"])
  elif kind == "object child":
    nodes = meta_graph.object_graph_def.nodes
    node = nodes[rng.randrange(len(nodes))]
    if node.children:
      child = node.children[rng.randrange(len(node.children))]
      child.node_id = rng.choice([0, rng.randrange(len(nodes)), len(nodes) + 3])
    else:
      node.children.add(node_id=rng.choice([0, rng.randrange(len(nodes))]), local_name="loop")
  elif kind == "function arg dtype":
    function = rng.choice(meta_graph.graph_def.library.function)
    args = list(function.signature.input_arg) + list(function.signature.output_arg)
    if args:
      rng.choice(args).type = rng.choice(_DTYPES)
  else:
    nodes = [n for n in meta_graph.object_graph_def.nodes
             if n.WhichOneof("kind") == "bare_concrete_function"]
    concretes = meta_graph.object_graph_def.concrete_functions
    if not concretes:
      return "no-op"
    name = rng.choice(sorted(concretes))
    spec = concretes[name]
    if spec.HasField("canonicalized_input_signature") and rng.random() < 0.5:
      spec.canonicalized_input_signature.Clear()
    else:
      spec.bound_inputs.append(rng.randrange(len(meta_graph.object_graph_def.nodes) + 2))
    del nodes
  return kind


_BASE = {}


def fuzz(seed: int, workdir: str):
  import hostile_models  # pylint: disable=import-outside-toplevel
  rng = random.Random(seed)
  if "proto" not in _BASE:
    _BASE["proto"] = hostile_models.read(SOURCE)
  proto = type(_BASE["proto"])()
  proto.CopyFrom(_BASE["proto"])
  kinds = [_mutate(proto, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
  path = hostile_models.write(SOURCE, os.path.join(workdir, "policy"), proto)
  backend = "auto" if seed % 8 == 0 else "tf"
  try:
    result = _result(_policy(path, backend, workdir))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  result["mutations"] = kinds
  return result


def _with_tf_agents(case, workdir):
  _WITH_TF_AGENTS.append(True)
  try:
    return case(workdir)
  finally:
    _WITH_TF_AGENTS.clear()


def __getattr__(name: str):
  if name.startswith("fuzz_"):
    return functools.partial(fuzz, int(name[len("fuzz_"):]))
  if name.startswith("tf_agents__"):
    return functools.partial(_with_tf_agents, globals()[name[len("tf_agents__"):]])
  raise AttributeError(name)


# -- Converted models --------------------------------------------------------------


def _engine_and_flatbuffer(workdir):
  policy = _policy(_copy(workdir), "lite", workdir)
  engine = policy._engine  # pylint: disable=protected-access
  flatbuffer = lite_model_of(policy).flatbuffer
  return engine, flatbuffer


def lite_model_of(policy):
  from policy_runtime.policies.runtime import lite_model  # pylint: disable=import-outside-toplevel
  return lite_model.model_of(policy._switch.active.call_args)  # pylint: disable=protected-access


def flatbuffer_wrong_dtype_expected(workdir):
  """check_model_io names the tensor when the model's dtype is not the spec's."""
  from policy_runtime.policies.runtime import lite_checks  # pylint: disable=import-outside-toplevel
  engine, flatbuffer = _engine_and_flatbuffer(workdir)
  inputs, outputs = engine._expected_io  # pylint: disable=protected-access
  name, _, shape = inputs[-1]
  inputs = inputs[:-1] + [(name, np.dtype("float64"), shape)]
  lite_checks.check_model_io(flatbuffer, inputs, outputs, 2**30)
  return "accepted"


def flatbuffer_flips(workdir):
  """150 models with one byte flipped: each loads or is a ValueError (counts by outcome)."""
  engine, flatbuffer = _engine_and_flatbuffer(workdir)
  rng = random.Random(25)
  counts = {"ok": 0, "ValueError": 0}
  for _ in range(150):
    data = bytearray(flatbuffer)
    at = rng.randrange(len(data))
    data[at] ^= 1 << rng.randrange(8)
    engine._checked.clear()  # pylint: disable=protected-access
    try:
      engine._model(bytes(data))  # pylint: disable=protected-access
      counts["ok"] += 1
    except ValueError:
      counts["ValueError"] += 1
  return counts


# -- Object graph ------------------------------------------------------------------


def _object_graph(workdir, edit) -> str:
  import hostile_models  # pylint: disable=import-outside-toplevel
  proto = hostile_models.read(SOURCE)
  edit(proto.meta_graphs[0].object_graph_def.nodes)
  return hostile_models.write(SOURCE, os.path.join(workdir, "policy"), proto)


def _child_named(nodes, parent: int, name: str):
  return next(c for c in nodes[parent].children if c.local_name == name)


def object_graph_cycle(workdir):
  """Every child of the root's `get_initial_state` points back at the root."""
  def edit(nodes):
    child = _child_named(nodes, 0, "get_initial_state")
    child.node_id = 0
  return _result(_policy(_object_graph(workdir, edit)))


def object_graph_self_loops(workdir):
  """Each node with children gets a child that is itself."""
  def edit(nodes):
    for i, node in enumerate(nodes):
      if node.children:
        node.children.add(node_id=i, local_name="self")
  return _result(_policy(_object_graph(workdir, edit)))


# -- The converter child -----------------------------------------------------------


def _with_convert_timeout(workdir, backend):
  from policy_runtime.policies.engines import lite_converter  # pylint: disable=import-outside-toplevel
  os.environ[lite_converter.TIMEOUT_ENV] = "0.05"
  try:
    return _result(_policy(_copy(workdir), backend, workdir))
  finally:
    del os.environ[lite_converter.TIMEOUT_ENV]


def converter_timeout_lite(workdir):
  return _with_convert_timeout(workdir, "lite")


def converter_timeout_auto(workdir):
  return _with_convert_timeout(workdir, "auto")


def converter_crash_lite(workdir):
  """The converter child dies mid-conversion (killed as a crash would): our ValueError."""
  import signal  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  from policy_runtime.policies.engines import lite_converter  # pylint: disable=import-outside-toplevel

  def kill_soon():
    for _ in range(200):
      child = lite_converter._child  # pylint: disable=protected-access
      if child is not None:
        os.kill(child.process.pid, signal.SIGSEGV)
        return
      threading.Event().wait(0.01)

  lite_converter.shutdown()
  killer = threading.Thread(target=kill_soon)
  killer.start()
  try:
    return _result(_policy(_copy(workdir), "lite", workdir))
  finally:
    killer.join()


CASES = [name for name, value in list(globals().items())
         if callable(value) and getattr(value, "__module__", None) == __name__
         and not name.startswith("_") and name not in ("fuzz", "lite_model_of")]
