"""Untrusted SavedModels: audited statically, with an allow-list, before TF loads anything."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

import hostile_models

from policy_runtime.policies import SavedModelPyTFEagerPolicy, UnsafeGraphError
from policy_runtime.policies.saved_model import graph_audit
from tools.cli import policy_cli
from tools.fixtures import policy_zoo


class FileWritingResource(tf.saved_model.experimental.TrackableResource):
  """A resource whose initializer, run by TF's loader, writes a file."""

  def __init__(self, target):
    super().__init__()
    self._target = target

  def _create_resource(self):
    return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

  def _initialize(self):
    tf.io.write_file(self._target, "written at load")
    return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)


def _export(path, register=None, attach=None):
  policy = policy_zoo.q_mlp_policy()
  saver = policy_zoo.make_saver(policy)
  if attach:
    for name, value in attach.items():
      setattr(saver._policy, name, value)  # pylint: disable=protected-access
  for name, (fn, spec) in (register or {}).items():
    saver.register_function(name, fn, spec)
  saver.save(str(path))
  return str(path)


def test_resource_initializer_that_writes_a_file_is_refused_and_nothing_runs(tmp_path):
  target = tmp_path / "written.txt"
  path = _export(tmp_path / "p", attach={"sneaky": FileWritingResource(str(target))})
  assert not target.exists()
  with pytest.raises(UnsafeGraphError,
                     match=r"function '[\w/]*sneaky/_initialize' uses file system ops \(WriteFile\)"):
    SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  assert not target.exists(), "the refused SavedModel ran its initializer"
  # The opt-in loads it, and TF's loader does run the initializer: the check above can fail.
  SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, allow_unsafe_ops=True)
  assert target.read_text() == "written at load"


def _print_to_file(target):
  def fn(x):
    tf.print(x, output_stream=f"file://{target}")
    return x
  return fn


def _dataset(make):
  """A function whose result goes through the dataset `make(x)` builds."""
  def fn(x):
    return make(x).reduce(tf.constant(0.0), lambda acc, v: acc + tf.reduce_sum(v))
  return fn


def _unsafe_functions(tmp):
  scalar = tf.TensorSpec([], tf.float32)
  files = tf.constant([os.path.join(tmp, "data")])
  return {
      "PrintV2": (_print_to_file(os.path.join(tmp, "printed.txt")), scalar),
      "CacheDatasetV2": (_dataset(lambda x: tf.data.Dataset.from_tensors(x).cache(
          os.path.join(tmp, "cache"))), scalar),
      "SaveDatasetV2": (lambda x: tf.raw_ops.SaveDatasetV2(
          input_dataset=tf.data.Dataset.from_tensors(x)._variant_tensor,  # pylint: disable=protected-access
          path=os.path.join(tmp, "saved"), shard_func_other_args=[], shard_func=_shard_fn(),
          output_types=[tf.float32], output_shapes=[[]]), scalar),
      "LoadDataset": (_dataset(lambda x: tf.data.experimental.from_variant(
          tf.raw_ops.LoadDataset(path=os.path.join(tmp, "saved"), reader_func_other_args=[],
                                 output_types=[tf.float32], output_shapes=[[]],
                                 reader_func=_reader_fn()),
          tf.TensorSpec([], tf.float32))), scalar),
      "SnapshotDatasetV2": (_dataset(lambda x: tf.data.Dataset.from_tensors(x).snapshot(
          os.path.join(tmp, "snapshot"))), scalar),
      "DataServiceDatasetV4": (_dataset(lambda x: tf.data.Dataset.from_tensors(x).apply(
          tf.data.experimental.service.distribute("parallel_epochs", "grpc://localhost:1"))),
                               scalar),
      "DebugIdentityV2": (lambda x: tf.raw_ops.DebugIdentityV2(
          input=x, debug_urls=[f"file://{tmp}/debug"]), scalar),
      "CSVDatasetV2": (_dataset(lambda x: tf.data.experimental.CsvDataset(
          files, [tf.constant(0.0)]).map(lambda v: v + x)), scalar),
      "LMDBDataset": (_dataset(lambda x: tf.data.Dataset.from_tensors(x).concatenate(
          _lmdb(files))), scalar),
      "SqlDataset": (_dataset(lambda x: tf.data.experimental.SqlDataset(
          "sqlite", os.path.join(tmp, "db.sqlite"), "SELECT v FROM t", (tf.float32,))
                              .map(lambda v: v + x)), scalar),
      "RpcClient": (_rpc, scalar),
      "_hidden_WriteFile": (lambda x: (tf.io.write_file(os.path.join(tmp, "hidden"), "x"), x)[1],
                            scalar),
  }


def _shard_fn():
  @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
  def shard(unused):
    return tf.constant(0, tf.int64)
  return shard.get_concrete_function()


def _reader_fn():
  @tf.function(input_signature=[tf.TensorSpec([], tf.variant)])
  def reader(datasets):
    return datasets
  return reader.get_concrete_function()


def _lmdb(files):
  variant = tf.raw_ops.LMDBDataset(filenames=files, output_types=[tf.string, tf.string],
                                   output_shapes=[[], []])
  return tf.data.experimental.from_variant(
      variant, (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string))).map(
          lambda k, v: tf.strings.to_number(k))


def _rpc(x):
  from tensorflow.distribute.experimental.rpc.kernels import gen_rpc_ops
  client, _ = gen_rpc_ops.rpc_client(server_address="localhost:1", timeout_in_ms=1)
  future, _ = gen_rpc_ops.rpc_call(client=client, args=[x], method_name="m", timeout_in_ms=1)
  return x + tf.cast(tf.size(future), tf.float32)


_UNSAFE = ["PrintV2", "CacheDatasetV2", "SaveDatasetV2", "LoadDataset", "SnapshotDatasetV2",
           "DataServiceDatasetV4", "DebugIdentityV2", "CSVDatasetV2", "LMDBDataset",
           "SqlDataset", "RpcClient", "_hidden_WriteFile"]


@pytest.mark.parametrize("op", _UNSAFE)
def test_each_unsafe_op_is_refused_naming_function_and_op(tmp_path, op):
  fn, spec = _unsafe_functions(str(tmp_path))[op]
  name = op if op.startswith("_") else f"uses_{op.lower()}"
  path = _export(tmp_path / "p", register={name: (fn, spec)})
  expected_op = op.split("_")[-1] if op.startswith("_") else op
  with pytest.raises(UnsafeGraphError) as info:
    SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  message = str(info.value).splitlines()[0]
  assert f"function '{name}'" in message and expected_op in message, message
  assert "Nothing from it was run" in message
  assert set(os.listdir(tmp_path)) == {"p"}, "something was written"


def test_the_opt_in_loads_and_reports_the_op_family(tmp_path):
  fn, spec = _unsafe_functions(str(tmp_path))["PrintV2"]
  path = _export(tmp_path / "p", register={"debug_print": (fn, spec)})
  policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, allow_unsafe_ops=True)
  assert "PrintV2" in policy.op_families()["file system"]
  policy.debug_print(tf.constant([3.0]))
  assert (tmp_path / "printed.txt").read_text().strip() == "[3]"


def test_checkpoint_io_outside_the_saver_is_refused(tmp_path):
  def save_elsewhere(x):
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "stolen"), tensor_names=["x"],
                      shape_and_slices=[""], tensors=[x])
    return x
  path = _export(tmp_path / "p", register={"exfiltrate": (save_elsewhere, tf.TensorSpec([], tf.float32))})
  with pytest.raises(UnsafeGraphError, match=r"function 'exfiltrate' uses checkpoint I/O ops \(SaveV2\)"):
    SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)


_FIXTURES = ["q_mlp", "q_8_leaves", "lstm_actor", "ppo_collect", "random", "q_fixed_batch"]


@pytest.mark.parametrize("name", _FIXTURES)
def test_fixture_exports_load_without_opt_in(saved, name):
  fixture = saved(name)
  kwargs = {"batch_time_steps": False} if fixture.batch_size else {}
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True, **kwargs)
  assert "not allow-listed" not in policy.op_families()
  assert set(policy.op_families()["checkpoint I/O"]) <= graph_audit.SAVER_OPS


@pytest.mark.parametrize("kind", sorted(policy_zoo.published_kinds()))
def test_published_policy_kinds_load_without_opt_in(tmp_path, kind):
  policy_zoo.save(policy_zoo.published_kinds()[kind](), str(tmp_path / kind))
  policy = SavedModelPyTFEagerPolicy(str(tmp_path / kind), load_specs_from_pbtxt=True)
  assert "not allow-listed" not in policy.op_families()


def test_the_default_and_legacy_exports_load_without_opt_in(tmp_path):
  SavedModelPyTFEagerPolicy(policy_cli.DEFAULT_POLICY, load_specs_from_pbtxt=True)
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legacy_export.py")
  result = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  legacy = SavedModelPyTFEagerPolicy(str(tmp_path / "policy"), load_specs_from_pbtxt=True)
  assert legacy.load_mode.startswith("flat signatures only")


@pytest.fixture(scope="module")
def plain_export(tmp_path_factory):
  return _export(tmp_path_factory.mktemp("plain") / "p")


def _forge_restore_write(plain_export, tmp_path, variant, flat):
  watched = tmp_path / "watched"
  watched.mkdir()
  proto = hostile_models.add_restore_write(hostile_models.read(plain_export),
                                           str(watched / "stolen"), variant)
  return hostile_models.write(plain_export, str(tmp_path / "forged"), proto,
                              flat_signatures_only=flat), watched


@pytest.mark.parametrize("flat", [False, True], ids=["object graph", "flat signatures"])
@pytest.mark.parametrize("variant", hostile_models.RESTORE_WRITES)
def test_checkpoint_io_in_the_saver_on_a_path_not_the_loaders_is_refused(
    plain_export, tmp_path, variant, flat):
  path, watched = _forge_restore_write(plain_export, tmp_path, variant, flat)
  for backend in ("tf", "lite", "auto"):
    with pytest.raises(UnsafeGraphError, match=r"saver uses checkpoint I/O ops \(SaveV2\) on paths "
                                               r"other than the loader's filename"):
      SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend=backend)
  assert not os.listdir(watched)


@pytest.mark.parametrize("flat", [False, True], ids=["object graph", "flat signatures"])
@pytest.mark.parametrize("variant", hostile_models.RESTORE_WRITES[:3])
def test_the_forged_saver_writes_when_the_audit_is_waived(plain_export, tmp_path, variant, flat):
  """The forgeries above are real: past the audit, LiteRT's converter runs the restore
  function through TF's loader, and the file appears."""
  path, watched = _forge_restore_write(plain_export, tmp_path, variant, flat)
  policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="lite",
                                     allow_unsafe_ops=True)
  assert policy.load_mode.startswith("flat signatures" if flat else "object graph")
  assert sorted(os.listdir(watched)) == ["stolen.data-00000-of-00001", "stolen.index"]


def test_the_allow_list_has_no_op_that_reaches_outside():
  for op in graph_audit.ALLOWED_OPS:
    for family, pattern in graph_audit.UNSAFE_FAMILIES.items():
      assert not pattern.search(op), (op, family)
  assert not graph_audit.SAVER_OPS & graph_audit.ALLOWED_OPS


def test_the_cli_refuses_with_the_same_message(tmp_path, capsys):
  target = tmp_path / "written.txt"
  path = _export(tmp_path / "p", attach={"sneaky": FileWritingResource(str(target))})
  assert policy_cli.main(["inspect", path]) == 1
  assert "uses file system ops (WriteFile)" in capsys.readouterr().err
  assert not target.exists()
