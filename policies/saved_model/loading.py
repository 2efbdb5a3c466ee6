"""Loads a `PolicySaver` SavedModel into a `LoadedPolicy`.

Every file is read through TensorFlow's file layer (`tf.io.gfile` and TF's own
readers), so a policy loads from any path TensorFlow reads: local, `ram://`,
and, with their plugins, `gs://`, `s3://`, `hdfs://`.

`SavedModelSource.read()` reads `saved_model.pb` once, audits it
(`graph_audit`) before anything is handed to TF's loader, and keeps a
snapshot of exactly those bytes and the variables in TF's in-memory file
system. Every loaded copy (the active one, and the standby that
`update_from_checkpoint` restores into) loads from that snapshot, so both run
the audited graph even if the directory is later deleted or overwritten.

Two ways in:
  * the object graph (`tf.saved_model.load`), the normal case;
  * the flat signatures only (TF's v1 loader), for exports whose object graph
    no longer decodes, e.g. policies saved by TF 2.3-2.12 whose `distribution`
    function carries a TypeSpec this TensorFlow cannot decode. `action`,
    `get_initial_state`, `get_train_step` and `get_metadata` are flat
    signatures that need no Python objects.

Either way the result offers the same members. File problems become
`FileNotFoundError` / `ValueError` naming the path, never TF internals.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
import uuid
import weakref
from typing import Dict, List, Optional

from . import quiet_gym  # noqa: F401  before TF-Agents, which imports gym

import numpy as np
import tensorflow as tf
# Registers TFP's TypeSpecs; PolicySaver exports reference them in the
# `distribution` function, and loading fails without them.
import tensorflow_probability  # noqa: F401  pylint: disable=unused-import
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import load_v1_in_v2
from tensorflow.python.training import py_checkpoint_reader
from tensorflow.python.util import nest
from tf_agents.trajectories import policy_step

from . import graph_audit
from . import marshaling_plan
from . import specs as specs_lib
from . import storage
from . import variable_restore

SAVED_MODEL_FILE = "saved_model.pb"
VARIABLES_PREFIX = f"{tf.saved_model.VARIABLES_DIRECTORY}/{tf.saved_model.VARIABLES_FILENAME}"
# A checkpoint index larger than this is refused (real ones are kilobytes).
MAX_INDEX_BYTES = 64 * 2**20
# More data shards than this in a checkpoint header is refused.
MAX_SHARDS = 4096

_FINGERPRINT_FILE = "fingerprint.pb"
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"

# How TF reports a saved TypeSpec it cannot decode (older exports, or a spec
# class that is not importable here).
_UNDECODABLE_SPEC = re.compile(r"is not supported by this version of TensorFlow|"
                               r"has not been registered")


def check_model_dir(model_path: str) -> str:
  """Returns the path of `saved_model.pb`, raising FileNotFoundError if absent."""
  if not storage.is_dir(model_path):
    raise FileNotFoundError(f"policy directory not found: {model_path}")
  pb = storage.join(model_path, SAVED_MODEL_FILE)
  if not storage.exists(pb):
    raise FileNotFoundError(f"not a SavedModel directory, {SAVED_MODEL_FILE} is missing: {pb}")
  return pb


def parse_saved_model(pb: str, data: bytes) -> saved_model_pb2.SavedModel:
  """Parses saved_model.pb bytes; a truncated or corrupt file is a ValueError naming it."""
  proto = saved_model_pb2.SavedModel()
  try:
    proto.ParseFromString(data)
  except Exception as e:  # protobuf's DecodeError and friends
    raise ValueError(f"corrupt or truncated SavedModel file {pb}: {storage.first_line(e)}") from None
  if not proto.meta_graphs:
    raise ValueError(f"corrupt or truncated SavedModel file {pb}: it holds no MetaGraph")
  return proto


def read_checkpoint(prefix: str) -> Dict[str, np.ndarray]:
  """Every value of a checkpoint by key (strings as bytes)."""
  # Not tf.train.load_checkpoint: on ram:// a prefix also looks like a directory.
  reader = py_checkpoint_reader.NewCheckpointReader(prefix)
  return {key: reader.get_tensor(key) for key in reader.get_variable_to_dtype_map()}


def write_checkpoint(prefix: str, values: Dict[str, np.ndarray]) -> None:
  """Writes `values` under their keys as a checkpoint at `prefix` (any TF file system)."""
  keys = sorted(values)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=keys, shape_and_slices=[""] * len(keys),
                    tensors=[values[k] for k in keys])


def model_variable_key(index: int) -> str:
  """The checkpoint key of `model_variables[index]` in a PolicySaver export's own layout."""
  return f"model_variables/{index}/.ATTRIBUTES/VARIABLE_VALUE"


def _varint(data: bytes, at: int) -> tuple:
  value = shift = 0
  while True:
    if at >= len(data) or shift > 63:
      raise ValueError("truncated varint")
    byte = data[at]
    value |= (byte & 0x7F) << shift
    at, shift = at + 1, shift + 7
    if not byte & 0x80:
      return value, at


def checkpoint_num_shards(index_path: str, index: bytes) -> int:
  """The data shard count in a checkpoint index's header (`BundleHeaderProto`).

  The header is the table's first entry (the empty key), at the start of its
  first, uncompressed data block: varints shared=0, unshared=0, value length,
  then the proto.

  Raises:
    ValueError: naming `index_path`, when it holds no readable header.
  """
  from tensorflow.core.protobuf import tensor_bundle_pb2  # pylint: disable=import-outside-toplevel
  try:
    shared, at = _varint(index, 0)
    unshared, at = _varint(index, at)
    length, at = _varint(index, at)
    if shared or unshared or at + length > len(index):
      raise ValueError("no header entry first")
    header = tensor_bundle_pb2.BundleHeaderProto()
    header.ParseFromString(index[at:at + length])
  except Exception as e:  # pylint: disable=broad-except  (DecodeError and ours)
    raise ValueError(f"corrupt checkpoint index {index_path}: {e}") from None
  if not 0 <= header.num_shards <= MAX_SHARDS:
    raise ValueError(f"corrupt checkpoint index {index_path}: num_shards "
                     f"{header.num_shards} (at most {MAX_SHARDS})")
  return header.num_shards


def checkpoint_files(prefix: str) -> Dict[str, bytes]:
  """The files of the checkpoint at `prefix` that TF reads, by suffix (".index",
  ".data-00000-of-00001", ...), each read as a size-limited regular file.

  Only the index and the data shards its header names are read: nothing else
  beside them (a FIFO, a device, a huge file) is touched.

  Raises:
    FileNotFoundError: the index or a data shard is missing.
    ValueError: naming the file: not a regular file, too large, or a corrupt index.
  """
  index_path = prefix + ".index"
  index = storage.read_bytes(index_path, MAX_INDEX_BYTES)
  files = {".index": index}
  shards = checkpoint_num_shards(index_path, index)
  for shard in range(shards):
    suffix = f".data-{shard:05d}-of-{shards:05d}"
    files[suffix] = storage.read_bytes(prefix + suffix)
  return files


def snapshot_checkpoint(prefix: str, target_prefix: str) -> None:
  """Copies the checkpoint at `prefix` (its referenced files only) to `target_prefix`."""
  files = checkpoint_files(prefix)
  try:
    tf.io.gfile.makedirs(target_prefix.rsplit("/", 1)[0])
    for suffix, data in files.items():
      with tf.io.gfile.GFile(target_prefix + suffix, "wb") as f:
        f.write(data)
  except tf.errors.OpError as e:
    raise ValueError(f"cannot snapshot checkpoint {prefix}: {storage.first_line(e)}") from None


def asset_files(proto: saved_model_pb2.SavedModel) -> List[str]:
  """The files under assets/ the SavedModel names (MetaGraphDef.asset_file_def, which the
  object graph's asset nodes index), relative to assets/.

  Raises:
    ValueError: a name that leaves assets/ or an asset node with a bad index.
  """
  meta_graph = proto.meta_graphs[0]
  names = [a.filename for a in meta_graph.asset_file_def]
  for node in meta_graph.object_graph_def.nodes:
    if node.WhichOneof("kind") == "asset":
      index = node.asset.asset_file_def_index
      if not 0 <= index < len(names):
        raise ValueError(f"saved_model.pb: an asset node names asset_file_def[{index}] of "
                         f"{len(names)}")
  for name in names:
    parts = name.split("/")
    if not name or name.startswith("/") or "://" in name or ".." in parts:
      raise ValueError(f"saved_model.pb: asset_file_def filename {name!r} is not a file "
                       "under assets/")
  return sorted(set(names))


class SavedModelSource:
  """The audited bytes of one SavedModel, from which every copy of it loads.

  `read()` parses and audits `saved_model.pb` before TF's loader sees it, then
  snapshots those bytes with `variables/` and `assets/` into TF's in-memory
  file system (`ram://`). Loading from the snapshot means the loader runs
  exactly the audited graph, and a later standby copy needs nothing from
  `model_path`. `release()` drops the snapshot once no more copies are needed.
  """

  def __init__(self, model_path: str, proto: saved_model_pb2.SavedModel, pb_bytes: bytes,
               report: graph_audit.AuditReport):
    self.path = model_path
    self.proto = proto
    self.audit = report
    self.pb_bytes = pb_bytes   # the audited saved_model.pb (LiteRT re-converts from it)
    self.fingerprint = hashlib.sha256(pb_bytes).hexdigest()
    self.snapshot: Optional[str] = f"ram://policy_runtime/{uuid.uuid4().hex}"
    try:
      # Only what the SavedModel references: variables' index and the shards
      # it names, the assets the graph names, fingerprint.pb. Each is a
      # regular file read with a size limit; nothing else there is touched.
      files = {SAVED_MODEL_FILE: pb_bytes}
      variables_prefix = storage.join(model_path, VARIABLES_PREFIX)
      if storage.exists(variables_prefix + ".index") or storage.is_local(model_path) and \
          os.path.lexists(variables_prefix + ".index"):
        for suffix, data in checkpoint_files(variables_prefix).items():
          files[VARIABLES_PREFIX + suffix] = data
      for name in asset_files(proto):
        part = f"{tf.saved_model.ASSETS_DIRECTORY}/{name}"
        files[part] = storage.read_bytes(storage.join(model_path, part))
      fingerprint = storage.join(model_path, _FINGERPRINT_FILE)
      if storage.exists(fingerprint):
        files[_FINGERPRINT_FILE] = storage.read_bytes(fingerprint, MAX_INDEX_BYTES)
      for part, data in files.items():
        path = storage.join(self.snapshot, part)
        tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
        with tf.io.gfile.GFile(path, "wb") as f:
          f.write(data)
    except tf.errors.OpError as e:
      self.release()
      raise ValueError(f"cannot read SavedModel {model_path}: {storage.first_line(e)}") from None
    except BaseException:
      self.release()
      raise
    self._finalizer = weakref.finalize(self, storage.remove_tree, self.snapshot)

  @classmethod
  def read(cls, model_path: str, allow_unsafe_ops: bool) -> "SavedModelSource":
    """Reads and audits `model_path` (nothing from it runs before the audit).

    Raises:
      FileNotFoundError: the directory or its saved_model.pb is missing.
      ValueError: saved_model.pb is corrupt or truncated.
      graph_audit.UnsafeGraphError: (a ValueError) ops outside the allow-list.
    """
    pb = check_model_dir(model_path)
    data = storage.read_bytes(pb)
    proto = parse_saved_model(pb, data)
    report = graph_audit.audit(proto, model_path, allow_unsafe_ops)
    return cls(model_path, proto, data, report)

  def load(self, policy_specs: specs_lib.PolicySpecs) -> "LoadedPolicy":
    """Loads one copy from the snapshot (object graph, else signatures only).

    Raises:
      ValueError: the SavedModel cannot be loaded or has no usable `action`.
    """
    if self.snapshot is None:
      raise RuntimeError(f"{self.path}: the snapshot was released")
    try:
      saved = tf.saved_model.load(self.snapshot)
    except Exception as e:  # pylint: disable=broad-except
      reason = self._user_path(storage.first_line(e))
      if _UNDECODABLE_SPEC.search(str(e)):
        return SignaturePolicy(self, policy_specs, reason=reason)
      raise ValueError(f"cannot load SavedModel {self.path}: {reason}") from None
    try:
      return ObjectGraphPolicy(self.path, saved)
    except (AttributeError, TypeError, KeyError, IndexError) as e:
      # An object graph whose children are not what PolicySaver writes (e.g.
      # edges forming cycles, or a function's name bound to another object).
      raise ValueError(f"{storage.join(self.path, SAVED_MODEL_FILE)}: its object graph is not "
                       f"a PolicySaver export's: {type(e).__name__}: "
                       f"{storage.first_line(e)}") from None

  def release(self) -> None:
    """Drops the in-memory snapshot (and the bytes of saved_model.pb)."""
    self.pb_bytes = b""
    if self.snapshot is not None:
      storage.remove_tree(self.snapshot)
      self.snapshot = None

  def _user_path(self, text: str) -> str:
    return text.replace(self.snapshot, self.path) if self.snapshot else text


class LoadedPolicy(abc.ABC):
  """One loaded copy of a policy: its action function and its other members."""

  path: str
  action: marshaling_plan.ActionFunction
  mode: str = "object graph"

  @abc.abstractmethod
  def get_initial_state(self, batch_size: int):
    """The initial policy state for `batch_size` environments (nest of tensors)."""

  @abc.abstractmethod
  def get_train_step(self) -> np.ndarray:
    """The train step variable's value."""

  @abc.abstractmethod
  def get_metadata(self) -> Dict[str, np.ndarray]:
    """The metadata variables' values by name."""

  @abc.abstractmethod
  def variables(self) -> list:
    """The model variables."""

  @abc.abstractmethod
  def restore(self, checkpoint_prefix: str) -> None:
    """Reads every variable from a checkpoint (raises on any mismatch)."""

  @abc.abstractmethod
  def attribute(self, name: str):
    """Another member of the SavedModel (e.g. a registered function)."""

  @abc.abstractmethod
  def write_variables(self, prefix: str) -> None:
    """Writes the current variables as the SavedModel's own variables checkpoint."""

  @abc.abstractmethod
  def assign_model_variables(self, values: list) -> None:
    """Sets the model variables (those `variables()` returns, in order) to `values`."""

  def checkpoint_values(self) -> Dict[str, np.ndarray]:
    """Every saved variable's current value, by its key in the SavedModel's own checkpoint."""
    scratch = f"ram://policy_runtime/values-{uuid.uuid4().hex}"
    try:
      prefix = storage.join(scratch, "variables")
      self.write_variables(prefix)
      return read_checkpoint(prefix)
    finally:
      storage.remove_tree(scratch)

  def copy_variables_from(self, other: "LoadedPolicy") -> None:
    """Sets every saved variable to `other`'s current value (a copy of the same SavedModel)."""
    scratch = f"ram://policy_runtime/copy-{uuid.uuid4().hex}"
    try:
      prefix = storage.join(scratch, "variables")
      other.write_variables(prefix)
      self.restore(prefix)
    finally:
      storage.remove_tree(scratch)


class ObjectGraphPolicy(LoadedPolicy):
  """A policy restored with its Python object graph (`tf.saved_model.load`)."""

  def __init__(self, path: str, saved):
    self.path = path
    self.saved = saved
    if not hasattr(saved, "action"):
      raise ValueError(f"{storage.join(path, SAVED_MODEL_FILE)} is not a TF-Agents PolicySaver "
                       "export: it has no `action` function")
    self.action = marshaling_plan.action_function_from_concrete(self._action_concrete())
    self._checkpoint = tf.train.Checkpoint(policy=saved)
    # `PolicySaver.save_checkpoint` roots its checkpoint at a "policy" child;
    # `PolicySaver.save` writes the SavedModel's own, rooted at the policy.
    self._restorers = {True: variable_restore.VariableRestorer(saved, {"policy": saved}),
                       False: variable_restore.VariableRestorer(saved)}
    self._own_keys: Optional[dict] = None   # checkpoint_values' keys ({}: write each time)
    self._own_graph = None
    self._initial_state_takes_batch_size = any(
        tf.nest.flatten(c.structured_input_signature)
        for c in saved.get_initial_state.concrete_functions)

  def _action_concrete(self):
    candidates = []
    for concrete in self.saved.action.concrete_functions:
      args, kwargs = concrete.structured_input_signature
      if len(args) >= 2 and not kwargs and hasattr(type(args[0]), "_fields"):
        candidates.append(concrete)
    if not candidates:
      raise ValueError(f"{self.path}: the saved `action` function has no (time_step, "
                       "policy_state) signature (was it exported with input_fn_and_spec?)")
    # The variant with the fewest extra (non-tensor) arguments.
    return min(candidates, key=lambda c: len(c.structured_input_signature[0]))

  def get_initial_state(self, batch_size):
    if self._initial_state_takes_batch_size:
      return self.saved.get_initial_state(batch_size=batch_size)
    return self.saved.get_initial_state()  # exported with a fixed batch size

  def get_train_step(self):
    return np.asarray(self.saved.get_train_step())

  def get_metadata(self):
    return {k: np.asarray(v) for k, v in self.saved.get_metadata().items()}

  def variables(self):
    return self.saved.model_variables

  def restore(self, checkpoint_prefix):
    reader = py_checkpoint_reader.NewCheckpointReader(checkpoint_prefix)
    nested = any(k.startswith("policy/") for k in reader.get_variable_to_dtype_map())
    if self._restorers[nested].restore(reader):
      return
    checkpoint = self._checkpoint if nested else tf.train.Checkpoint(root=self.saved)
    status = checkpoint.read(checkpoint_prefix)
    status.assert_existing_objects_matched().expect_partial()

  def attribute(self, name):
    return getattr(self.saved, name)

  def checkpoint_values(self) -> Dict[str, np.ndarray]:
    # The SavedModel's own checkpoint layout is learnt from one write; then read
    # from the variables (no checkpoint written per update).
    if self._own_keys is None:
      scratch = f"ram://policy_runtime/values-{uuid.uuid4().hex}"
      try:
        prefix = storage.join(scratch, "variables")
        self.write_variables(prefix)
        reader = py_checkpoint_reader.NewCheckpointReader(prefix)
        self._own_keys = self._restorers[False].variables_by_key(reader) or {}
        self._own_graph = reader.get_tensor(variable_restore.OBJECT_GRAPH_KEY)
        if not self._own_keys:
          return read_checkpoint(prefix)
      finally:
        storage.remove_tree(scratch)
    if not self._own_keys:
      return super().checkpoint_values()
    values = {key: variable.numpy() for key, variable in self._own_keys.items()}
    values[variable_restore.OBJECT_GRAPH_KEY] = self._own_graph
    return values

  def write_variables(self, prefix):
    tf.train.Checkpoint(root=self.saved).write(prefix)

  def assign_model_variables(self, values):
    for variable, value in zip(self.saved.model_variables, values):
      variable.assign(value)


def nest_path_names(spec_nest, prefix: str) -> List[str]:
  """Leaf names as PolicySaver's `rename_spec_with_nest_paths` writes them."""
  paths = [p for p, _ in nest.flatten_with_joined_string_paths(spec_nest)]
  return [f"{prefix}{p}" if p else prefix.rstrip("/") for p in paths]


def action_signature_names(policy_specs: specs_lib.PolicySpecs) -> tuple:
  """PolicySaver's names of the flat `action` signature, in `tf.nest` order.

  Inputs ("0/step_type", "0/observation/img", "1/0", ...) for
  `(time_step, policy_state)`; outputs ("action", "state/0", "info/...") for
  `PolicyStep(action, state, info)`.
  """
  inputs = (nest_path_names(policy_specs.time_step_spec, "0/") +
            nest_path_names(policy_specs.policy_state_spec, "1/"))
  outputs = (nest_path_names(policy_specs.action_spec, "action/") +
             nest_path_names(policy_specs.policy_state_spec, "state/") +
             nest_path_names(policy_specs.info_spec, "info/"))
  return inputs, outputs


class SignaturePolicy(LoadedPolicy):
  """A policy run from its flat signatures (TF's v1 loader), without its object graph.

  The nested structure comes from the policy's specs (arguments or
  policy_specs.pbtxt), matched to the signatures by PolicySaver's nest-path
  names ("0/observation/a", "1/0", "state/0", ...). Train step, metadata and
  variable values are read from the checkpoint last restored. Functions added
  with `register_function` live only in the object graph: not available.
  """

  def __init__(self, source: SavedModelSource, policy_specs: specs_lib.PolicySpecs,
               reason: str):
    self.path = path = source.path
    self.reason = reason
    self.mode = f"flat signatures only ({reason})"
    try:
      self.obj = load_v1_in_v2.load(source.snapshot, ["serve"])
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"cannot load SavedModel {path} from its signatures either: "
                       f"{source._user_path(storage.first_line(e))} (object graph: {reason})") from None  # pylint: disable=protected-access
    self._restore_fn = self._make_restore_fn(source.proto.meta_graphs[0].saver_def)
    # Checkpoint key -> value of every saved variable, as last restored.
    self._values = self._read_values(storage.join(source.snapshot, VARIABLES_PREFIX), keys=None)
    self.action = self._action_function(policy_specs)
    self._state_spec = policy_specs.policy_state_spec

  def _signature(self, name):
    try:
      return self.obj.signatures[name]
    except KeyError:
      raise ValueError(f"{self.path}: the SavedModel has no `{name}` signature") from None

  def _action_function(self, policy_specs) -> marshaling_plan.ActionFunction:
    sig = self._signature("action")
    keywords = list(sig.structured_input_signature[1])
    arg_specs = sig.structured_input_signature[1]
    flat_names, output_names = action_signature_names(policy_specs)
    missing = [n for n in flat_names if n not in arg_specs]
    if missing or len(flat_names) != len(keywords):
      raise ValueError(f"{self.path}: the specs do not match the `action` signature "
                       f"(signature inputs {sorted(keywords)}, specs give {flat_names})")
    batch = arg_specs[flat_names[0]].shape[0] if flat_names else None

    def batched(spec_nest):
      return specs_lib.with_batch(spec_nest, batch)

    output_structure = policy_step.PolicyStep(
        action=batched(policy_specs.action_spec), state=batched(policy_specs.policy_state_spec),
        info=batched(policy_specs.info_spec))
    out_tensor_names = [t.name for t in sig.outputs]
    try:
      output_order = [out_tensor_names.index(sig.structured_outputs[n].name)
                      for n in output_names]
    except KeyError as e:
      raise ValueError(f"{self.path}: the specs do not match the `action` signature outputs "
                       f"({sorted(sig.structured_outputs)}): no output {e}") from None
    return marshaling_plan.ActionFunction(
        name=sig._inference_function.name.decode(),  # pylint: disable=protected-access
        time_step_spec=batched(policy_specs.time_step_spec),
        policy_state_spec=batched(policy_specs.policy_state_spec),
        output_structure=output_structure,
        num_outputs=len(sig.outputs),
        captures=tuple(sig.captured_inputs),
        concrete=sig,
        input_slots=tuple(keywords.index(n) for n in flat_names),
        output_indices=tuple(output_order),
    )

  def _make_restore_fn(self, saver_def):
    graph = self.obj.graph
    return self.obj.prune(feeds=[graph.as_graph_element(saver_def.filename_tensor_name)],
                          fetches=[graph.as_graph_element(saver_def.restore_op_name)])

  def get_initial_state(self, batch_size):
    if not tf.nest.flatten(self._state_spec):
      return ()
    sig = self._signature("get_initial_state")
    outputs = sig(batch_size=tf.constant(batch_size or 1, tf.int32)) if sig.structured_input_signature[1] else sig()
    names = nest_path_names(self._state_spec, "")
    return tf.nest.pack_sequence_as(self._state_spec, [outputs[n] for n in names])

  def _read_values(self, prefix: str, keys: Optional[List[str]]) -> Dict[str, np.ndarray]:
    """Values for `keys` (default: all) from a checkpoint.

    `PolicySaver.save_checkpoint` nests the policy's keys under "policy/";
    both layouts are accepted.
    """
    # Not tf.train.load_checkpoint: on ram:// a prefix also looks like a directory.
    reader = py_checkpoint_reader.NewCheckpointReader(prefix)
    available = reader.get_variable_to_dtype_map()
    if keys is None:
      keys = list(available)
    values = {}
    for key in keys:
      source = key if key in available else f"policy/{key}"
      if source not in available:
        raise ValueError(f"the checkpoint has no value for {key!r}")
      values[key] = reader.get_tensor(source)
    return values

  def _checkpoint_values(self, pattern: str) -> Dict[str, np.ndarray]:
    found = {}
    for key, value in self._values.items():
      match = re.fullmatch(pattern, key)
      if match:
        # Strings as TF returns them: object arrays of bytes.
        found[match.group(1)] = np.asarray(value, dtype=object if isinstance(value, bytes) else None)
    return found

  def get_train_step(self):
    values = self._checkpoint_values(r"(train_step)/\.ATTRIBUTES/VARIABLE_VALUE")
    if "train_step" in values:
      return values["train_step"]
    return np.asarray(list(self._signature("get_train_step")().values())[0])

  def get_metadata(self):
    return self._checkpoint_values(r"metadata/([^/]+)/\.ATTRIBUTES/VARIABLE_VALUE")

  def variables(self):
    values = self._checkpoint_values(r"model_variables/(\d+)/\.ATTRIBUTES/VARIABLE_VALUE")
    return [tf.Variable(values[k], trainable=False) for k in sorted(values, key=int)]

  def restore(self, checkpoint_prefix):
    values = self._read_values(checkpoint_prefix,
                               keys=[k for k in self._values if k != _OBJECT_GRAPH_KEY])
    values[_OBJECT_GRAPH_KEY] = self._values[_OBJECT_GRAPH_KEY]
    for key, value in values.items():
      if np.shape(value) != np.shape(self._values[key]):
        raise ValueError(f"{key!r} has shape {np.shape(value)} in the checkpoint, "
                         f"{np.shape(self._values[key])} in the policy")
    self._run_restore(values)

  def _run_restore(self, values: Dict[str, np.ndarray]) -> None:
    """Makes `values` the variables' values (keeping the old ones if that fails)."""
    # The graph's restore op reads the SavedModel's own key layout: write the
    # values in that layout to a temporary in-memory checkpoint and run it on that.
    scratch = f"ram://policy_runtime/restore-{uuid.uuid4().hex}"
    previous, self._values = self._values, values
    try:
      prefix = storage.join(scratch, "variables")
      self.write_variables(prefix)
      self._restore_fn(tf.constant(prefix))
    except BaseException:
      self._values = previous
      raise
    finally:
      storage.remove_tree(scratch)

  def write_variables(self, prefix):
    write_checkpoint(prefix, self._values)   # the SavedModel's own key layout, as last restored

  def assign_model_variables(self, values):
    keys = [model_variable_key(i) for i in range(len(values))]
    if any(k not in self._values for k in keys):
      raise ValueError(f"{self.path}: its checkpoint does not hold model_variables/0.."
                       f"{len(values) - 1}")
    updated = dict(self._values)
    updated.update({k: np.asarray(v) for k, v in zip(keys, values)})
    self._run_restore(updated)

  def attribute(self, name):
    if name == "signatures":
      return self.obj.signatures
    raise AttributeError(
        f"{name!r} is not available: {self.path} was loaded from its flat signatures only "
        f"({self.reason}); functions added with register_function need the object graph")
