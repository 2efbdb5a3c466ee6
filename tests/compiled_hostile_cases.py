"""Hostile compiled directories, one function `case(workdir)` each, run by `isolated.py`.

Each case copies a real compiled fixture (//tests:compiled_fixtures, made by
`compile_policy`), forges or plants files in it, and loads it with
`CompiledPolicy` (or updates a loaded policy to it). A case returns what the
load did or raises; `compiled_hostile_test.py` judges the outcomes. A forged
file gets a manifest that matches it, unless the case is about the manifest.
`fuzz_N` flips bytes of (or truncates) one file, seeded by N. No TensorFlow.
"""

from __future__ import annotations

import functools
import json
import os
import random
import resource
import shutil
import tarfile
import tempfile
import zipfile

import numpy as np

import interrupts
from policy_runtime.policies import compiled
from policy_runtime.policies.runtime import array_specs, compiled_format

_FIXTURES = {}


def _fixture(name: str) -> str:
  """The compiled directory of fixture `name`, extracted once per child."""
  if "root" not in _FIXTURES:
    runfiles = os.path.join(os.environ["TEST_SRCDIR"],
                            os.environ.get("TEST_WORKSPACE", "policy_runtime"))
    root = tempfile.mkdtemp(prefix="compiled_fixtures_")
    with tarfile.open(os.path.join(runfiles, "tests", "compiled_fixtures.tar")) as tar:
      tar.extractall(root, filter="data")
    _FIXTURES["root"] = root
  return os.path.join(_FIXTURES["root"], name, "compiled")


def _copy(workdir: str, name: str = "q_mlp", target: str = "policy") -> str:
  return shutil.copytree(_fixture(name), os.path.join(workdir, target))


def _file(directory: str, name: str) -> str:
  return os.path.join(directory, name)


def _reseal(directory: str) -> None:
  """Rewrites the manifest to match the files as they are now (a forger's manifest)."""
  files = {name: open(_file(directory, name), "rb").read() for name in compiled_format.FILES}
  with open(_file(directory, compiled_format.MANIFEST), "wb") as f:
    f.write(compiled_format.manifest_bytes(files))


def _edit_policy(directory: str, edit) -> str:
  path = _file(directory, compiled_format.POLICY)
  policy = json.load(open(path))
  edit(policy)
  with open(path, "w") as f:
    json.dump(policy, f)
  _reseal(directory)
  return directory


def _sample_step(policy, batch=None):
  outer = () if batch is None else (batch,)
  return array_specs.map_structure(
      lambda s: np.zeros(outer + tuple(s.shape), s.dtype), policy.time_step_spec)


def _result(policy) -> dict:
  step = policy.action(_sample_step(policy), policy.get_initial_state())
  return {"action": np.asarray(step.action).tolist(),
          "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _load(directory: str) -> dict:
  return _result(compiled.CompiledPolicy(directory))


# -- Files that are not what the manifest lists ----------------------------------


def _replace_with_fifo(workdir, name):
  directory = _copy(workdir)
  os.remove(_file(directory, name))
  os.mkfifo(_file(directory, name))
  return _load(directory)


def fifo_as_flatbuffer(workdir):
  return _replace_with_fifo(workdir, compiled_format.FLATBUFFER)


def fifo_as_manifest(workdir):
  return _replace_with_fifo(workdir, compiled_format.MANIFEST)


def fifo_as_values(workdir):
  return _replace_with_fifo(workdir, compiled_format.VALUES)


def _replace_with_link(workdir, name, target):
  directory = _copy(workdir)
  os.remove(_file(directory, name))
  os.symlink(target, _file(directory, name))
  return _load(directory)


def dev_zero_as_values(workdir):
  return _replace_with_link(workdir, compiled_format.VALUES, "/dev/zero")


def dev_urandom_as_policy(workdir):
  return _replace_with_link(workdir, compiled_format.POLICY, "/dev/urandom")


def dev_zero_as_manifest(workdir):
  return _replace_with_link(workdir, compiled_format.MANIFEST, "/dev/zero")


def directory_as_flatbuffer(workdir):
  directory = _copy(workdir)
  os.remove(_file(directory, compiled_format.FLATBUFFER))
  os.mkdir(_file(directory, compiled_format.FLATBUFFER))
  return _load(directory)


def symlink_to_regular_flatbuffer(workdir):
  """A symlink to a regular file is followed (a Bazel runfiles tree is all symlinks)."""
  directory = _copy(workdir)
  real = os.path.join(workdir, "real.tflite")
  shutil.move(_file(directory, compiled_format.FLATBUFFER), real)
  os.symlink(real, _file(directory, compiled_format.FLATBUFFER))
  return _load(directory)


def missing_values(workdir):
  directory = _copy(workdir)
  os.remove(_file(directory, compiled_format.VALUES))
  return _load(directory)


def sparse_gib_flatbuffer(workdir):
  """A 1 GiB (sparse) file where the manifest lists 23 KB: refused before it is read."""
  directory = _copy(workdir)
  with open(_file(directory, compiled_format.FLATBUFFER), "r+b") as f:
    f.truncate(2**30)
  return _load(directory)


# -- JSON ------------------------------------------------------------------------


def _deep(depth: int) -> bytes:
  return b'{"format": ' + b"[" * depth + b"]" * depth + b"}"


def deep_manifest(workdir):
  directory = _copy(workdir)
  with open(_file(directory, compiled_format.MANIFEST), "wb") as f:
    f.write(_deep(100_000))
  return _load(directory)


def deep_policy_json(workdir):
  directory = _copy(workdir)
  with open(_file(directory, compiled_format.POLICY), "wb") as f:
    f.write(b'{"specs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
  _reseal(directory)
  return _load(directory)


def deep_spec_nest_under_recursion_limit(workdir):
  """60 nested tuples (within the JSON limit) in place of the info spec."""
  def edit(policy):
    nest = {"tuple": []}
    for _ in range(29):
      nest = {"tuple": [nest]}
    policy["specs"]["info_spec"] = nest
  return _load(_edit_policy(_copy(workdir), edit))


def _set_signature(workdir, field, value, name="q_mlp"):
  def edit(policy):
    policy["signature"][field] = value
  return _load(_edit_policy(_copy(workdir, name), edit))


def fixed_batch_size_float(workdir):
  return _set_signature(workdir, "fixed_batch_size", 4.5, "q_fixed_batch")


def fixed_batch_size_string(workdir):
  return _set_signature(workdir, "fixed_batch_size", "4", "q_fixed_batch")


def fixed_batch_size_huge(workdir):
  return _set_signature(workdir, "fixed_batch_size", 2**40, "q_fixed_batch")


def input_names_not_strings(workdir):
  return _set_signature(workdir, "input_names", [1, 2, 3, 4])


def input_names_a_string(workdir):
  return _set_signature(workdir, "input_names", "0/step_type")


def output_names_too_few(workdir):
  return _set_signature(workdir, "output_names", [])


def input_names_duplicated(workdir):
  return _set_signature(workdir, "input_names", ["0/step_type"] * 4)


def input_names_renamed(workdir):
  """Names the model does not have: check_model_io names both lists."""
  return _set_signature(workdir, "input_names", ["a", "b", "c", "d"])


def output_indices_out_of_range(workdir):
  return _set_signature(workdir, "output_indices", [7])


def _set_spec(workdir, edit_leaf, spec="time_step_spec", field=3):
  def edit(policy):
    node = policy["specs"][spec]
    leaf = node["values"][field]["leaf"] if "values" in node else node["leaf"]
    edit_leaf(leaf)
  return _load(_edit_policy(_copy(workdir), edit))


def spec_dtype_object(workdir):
  return _set_spec(workdir, lambda leaf: leaf.update(dtype="|O"))


def spec_dtype_huge_void(workdir):
  return _set_spec(workdir, lambda leaf: leaf.update(dtype="|V2000000000"))


def spec_shape_huge(workdir):
  return _set_spec(workdir, lambda leaf: leaf.update(shape=[2**40]))


def spec_bounds_huge(workdir):
  def edit(leaf):
    leaf["minimum"] = {"shape": [2**40], "values": [0]}
  return _set_spec(workdir, edit, "action_spec")


def manifest_size_not_an_integer(workdir):
  directory = _copy(workdir)
  path = _file(directory, compiled_format.MANIFEST)
  manifest = json.load(open(path))
  manifest["files"][compiled_format.FLATBUFFER]["bytes"] = "23516"
  json.dump(manifest, open(path, "w"))
  return _load(directory)


# -- values.npz --------------------------------------------------------------------


def _npy_header(dtype: str, shape: tuple) -> bytes:
  header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
  header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
  return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _values_with(directory: str, members: dict) -> None:
  """values.npz with the fixture's members, plus `members` (name -> raw .npy bytes)."""
  path = _file(directory, compiled_format.VALUES)
  original = zipfile.ZipFile(path)
  with zipfile.ZipFile(path + ".new", "w", zipfile.ZIP_DEFLATED) as out:
    for info in original.infolist():
      out.writestr(info.filename, original.read(info.filename))
    for name, data in members.items():
      if callable(data):
        data(out, name)
      else:
        out.writestr(name, data)
  os.replace(path + ".new", path)
  _reseal(directory)


def npz_member_declares_4_tib(workdir):
  """An npy header of float32[2**40] (4 TiB) over 16 bytes of data."""
  directory = _copy(workdir)
  _values_with(directory, {"huge.npy": _npy_header("<f4", (2**40,)) + bytes(16)})
  return _load(directory)


def npz_deflate_bomb(workdir):
  """A member of 300 MiB of zeros, honestly declared, deflated to about 300 KB."""
  directory = _copy(workdir)

  def write(out, name):
    with out.open(name, "w", force_zip64=True) as member:
      member.write(_npy_header("|u1", (300 * 2**20,)))
      zeros = bytes(2**20)
      for _ in range(300):
        member.write(zeros)
  _values_with(directory, {"bomb.npy": write})
  assert os.path.getsize(_file(directory, compiled_format.VALUES)) < 2**21
  return _load(directory)


def npz_object_dtype(workdir):
  directory = _copy(workdir)
  _values_with(directory, {"train_step.npy": _npy_header("|O", (1,)) + b"\x80\x04K\x01."})
  return _load(directory)


def npz_not_a_zip(workdir):
  directory = _copy(workdir)
  with open(_file(directory, compiled_format.VALUES), "wb") as f:
    f.write(b"PK\x03\x04" + bytes(100))
  _reseal(directory)
  return _load(directory)


# -- The flatbuffer against the specs ------------------------------------------------


def _schema():
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
  return schema


def _model_object(flatbuffer: bytes):
  schema = _schema()
  return schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))


def _pack(model) -> bytes:
  import flatbuffers  # pylint: disable=import-outside-toplevel
  builder = flatbuffers.Builder(1024)
  builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
  return bytes(builder.Output())


def _edit_flatbuffer(directory: str, edit) -> str:
  path = _file(directory, compiled_format.FLATBUFFER)
  model = _model_object(open(path, "rb").read())
  edit(model)
  with open(path, "wb") as f:
    f.write(_pack(model))
  _reseal(directory)
  return directory


def _signature_tensor(model, kind: str, name: str):
  signature = next(s for s in model.signatureDefs if s.signatureKey == b"action")
  entries = signature.inputs if kind == "input" else signature.outputs
  entry = next(e for e in entries if e.name.decode() == name)
  return model.subgraphs[signature.subgraphIndex], entry


def flatbuffer_repacked_loads(workdir):
  """The control: the model unpacked and packed again (as the forgeries are) loads."""
  return _load(_edit_flatbuffer(_copy(workdir), lambda model: None))


def _huge_observation(model):
  subgraph, entry = _signature_tensor(model, "input", "0/observation")
  tensor = subgraph.tensors[entry.tensorIndex]
  tensor.shape = [1, 2**28]
  tensor.shapeSignature = [-1, 2**28]


def flatbuffer_huge_input(workdir):
  """action.tflite declares observation [1, 2**28] (1 GiB of float32); manifest forged."""
  return _load(_edit_flatbuffer(_copy(workdir), _huge_observation))


def flatbuffer_huge_input_specs_forged(workdir):
  """As above, with policy.json's observation specs forged to [2**28] as well."""
  directory = _edit_flatbuffer(_copy(workdir), _huge_observation)

  def edit(policy):
    policy["specs"]["time_step_spec"]["values"][3]["leaf"]["shape"] = [2**28]
    policy["signature"]["time_step"]["values"][3]["leaf"]["shape"] = [None, 2**28]
  return _load(_edit_policy(directory, edit))


def _other_policys_model(directory: str) -> str:
  shutil.copy(_file(_fixture("gaussian_actor"), compiled_format.FLATBUFFER),
              _file(directory, compiled_format.FLATBUFFER))
  _reseal(directory)
  return directory


def flatbuffer_of_another_policy(workdir):
  """q_mlp's directory with gaussian_actor's model (float32[1] actions, not int64)."""
  return _load(_other_policys_model(_copy(workdir)))


def _rebind_action(model, to: str):
  """The signature's `action` output (and the subgraph's output) bound to another tensor."""
  subgraph, entry = _signature_tensor(model, "output", "action")
  if to == "observation":
    _, source = _signature_tensor(model, "input", "0/observation")
    index = source.tensorIndex
  else:   # the Q-values: the float32 [batch, 2] tensor the argmax reads
    index = next(i for i, t in enumerate(subgraph.tensors)
                 if t.type == 0 and list(t.shape)[-1:] == [2] and len(t.shape) == 2)
  outputs = list(subgraph.outputs)
  outputs[outputs.index(entry.tensorIndex)] = index
  subgraph.outputs = outputs
  entry.tensorIndex = index


def action_rebound_to_q_values(workdir):
  return _load(_edit_flatbuffer(_copy(workdir), lambda m: _rebind_action(m, "q_values")))


def action_rebound_to_observation(workdir):
  return _load(_edit_flatbuffer(_copy(workdir), lambda m: _rebind_action(m, "observation")))


def _action_float32(policy, signature_too: bool):
  leaf = policy["specs"]["action_spec"]["leaf"]
  leaf["dtype"] = "<f4"
  if signature_too:
    policy["signature"]["outputs"]["values"][0]["leaf"].update(dtype="<f4", tf_dtype=1)


def action_spec_edited_to_float32(workdir):
  """policy.json's action spec says float32; the model (and the signature) int64."""
  return _load(_edit_policy(_copy(workdir), lambda p: _action_float32(p, False)))


def action_spec_and_signature_edited_to_float32(workdir):
  """policy.json says float32 throughout; the model still returns int64."""
  return _load(_edit_policy(_copy(workdir), lambda p: _action_float32(p, True)))


# -- update() refuses what the constructor refuses, and changes nothing ----------------


_FORGERIES = {
    "huge_input": lambda d: _edit_flatbuffer(d, _huge_observation),
    "another_policy": _other_policys_model,
    "rebound_to_q_values": lambda d: _edit_flatbuffer(d, lambda m: _rebind_action(m, "q")),
    "rebound_to_observation": lambda d: _edit_flatbuffer(
        d, lambda m: _rebind_action(m, "observation")),
    "fifo_values": lambda d: (os.remove(_file(d, compiled_format.VALUES)),
                              os.mkfifo(_file(d, compiled_format.VALUES))),
    "deep_policy_json": lambda d: (open(_file(d, compiled_format.POLICY), "wb").write(
        b"[" * 10_000 + b"]" * 10_000), _reseal(d)),
}


def update_to_forgeries(workdir):
  """Each forged directory given to update(): {forgery: the error's first line}; after
  each, the policy acts, reports and answers exactly as before."""
  good = _copy(workdir, target="good")
  policy = compiled.CompiledPolicy(good)
  step = _sample_step(policy)
  before = (policy.action(step).action.tolist(), policy.path, policy.manifest_sha256,
            policy.get_train_step().tolist())
  errors = {}
  for name, forge in _FORGERIES.items():
    directory = _copy(workdir, target=name)
    forge(directory)
    try:
      policy.update(directory)
      errors[name] = "accepted"
    except (ValueError, FileNotFoundError) as e:
      errors[name] = str(e).splitlines()[0]
    after = (policy.action(step).action.tolist(), policy.path, policy.manifest_sha256,
             policy.get_train_step().tolist())
    if after != before:
      raise AssertionError(f"{name}: the policy changed: {before} -> {after}")
  policy.update(_copy(workdir, target="good_again"))   # a good update still works
  errors["then a good update"] = policy.path
  return errors


# -- Updates: atomic under interrupts, and nothing kept -----------------------------


# The update's own steps. The checkers it calls (compiled_checks, lite_checks,
# array_specs) are pure functions: an interrupt in them propagates like any
# error raised there, and tracing their loops line by line would take minutes.
_UPDATE_FILES = ("compiled.py", "compiled_format.py", "safe_files.py", "lite_model.py")


def _negated_weights(model):
  """Every float32 constant negated: the same graph with other weights."""
  subgraph = model.subgraphs[0]
  for tensor in subgraph.tensors:
    buffer = model.buffers[tensor.buffer]
    if tensor.type == 0 and buffer.data is not None and len(buffer.data):
      buffer.data = (-np.frombuffer(bytes(buffer.data), "<f4")).view(np.uint8)


def _two_policies(workdir):
  """Two compiled directories of one policy (q_mlp) whose actions differ: the second's
  weights negated, its train step one more."""
  first = _copy(workdir, target="a")
  second = _edit_flatbuffer(_copy(workdir, target="b"), _negated_weights)
  values = dict(np.load(_file(second, compiled_format.VALUES)))
  values["train_step"] = values["train_step"] + 1
  with open(_file(second, compiled_format.VALUES), "wb") as f:
    f.write(compiled_format.values_bytes(values))
  _reseal(second)
  return first, second


def _observations(policy):
  """Nine time steps in one batch (one call, so wholly one model's)."""
  step = _sample_step(policy, 9)
  values = np.linspace(-2, 2, 9, dtype=np.float32)
  return step._replace(observation=np.repeat(values[:, None], 4, axis=1))


def update_interrupted_at_every_line(workdir):
  """KeyboardInterrupt at every line update() runs, while 4 threads act: each interrupted
  update leaves the policy on one directory or the other, wholly (path, train step and
  model agree), and the next update works. Returns the lines interrupted."""
  import threading  # pylint: disable=import-outside-toplevel
  dirs = _two_policies(workdir)
  policy = compiled.CompiledPolicy(dirs[0], batch_time_steps=False)
  step = _observations(policy)
  expected = []
  for directory in dirs:
    policy.update(directory)
    expected.append(policy.action(step).action.tolist())
  if expected[0] == expected[1]:
    raise AssertionError(f"the two directories act alike: {expected}")
  stop, wrong = threading.Event(), []

  def act():
    while not stop.is_set():
      got = policy.action(step).action.tolist()
      if got not in expected:
        wrong.append(got)

  actors = [threading.Thread(target=act) for _ in range(4)]
  for t in actors:
    t.start()
  base_step = policy.get_train_step().tolist() - 1   # dirs[1] acts now
  try:
    current = 1
    for n in range(1, 100_000):
      target = 1 - current
      finished = interrupts.finishes_unless_interrupted(n, _UPDATE_FILES, policy.update,
                                                        dirs[target])
      active = policy._switch.active  # pylint: disable=protected-access
      copies = policy._copies  # pylint: disable=protected-access
      if active not in copies or copies[0] is copies[1]:
        raise AssertionError(f"line {n}: the switch's copies are confused")
      current = dirs.index(policy.path)
      if (policy.get_train_step().tolist() != base_step + current or
          policy.action(step).action.tolist() != expected[current]):
        raise AssertionError(f"line {n}: path {policy.path} with train step "
                             f"{policy.get_train_step()} acts {policy.action(step).action}")
      policy.update(dirs[1 - current])     # the next good update works
      current = 1 - current
      if (policy.path != dirs[current] or
          policy.action(step).action.tolist() != expected[current]):
        raise AssertionError(f"line {n}: the update after the interrupt did not take")
      if finished:
        break
  finally:
    stop.set()
    for t in actors:
      t.join()
  if wrong:
    raise AssertionError(f"{len(wrong)} actions differed")
  if n < 50:
    raise AssertionError(f"update() ran only {n} lines")
  return n


def _live_rss_kb() -> float:
  """RSS after glibc returns its free memory to the system (malloc_trim): what is live.

  Without the trim, glibc keeps freed arenas mapped, and RSS after 200 updates grows by
  about 7 MB that nothing references."""
  import ctypes  # pylint: disable=import-outside-toplevel
  ctypes.CDLL("libc.so.6").malloc_trim(0)
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * resource.getpagesize() / 1024


def update_rss_growth(workdir, updates: int = 2000, warmup: int = 100,
                      keep_models: bool = False) -> dict:
  """Live RSS growth over `updates` updates alternating between two directories, after
  `warmup`; and how many models are alive at the end (gc-tracked `_Model`s).
  `keep_models` also loads and keeps one policy per update: a leak of one model
  per update, which the measurement must see."""
  import gc  # pylint: disable=import-outside-toplevel
  dirs = _two_policies(workdir)
  policy = compiled.CompiledPolicy(dirs[0])
  for i in range(warmup):
    policy.update(dirs[i % 2])
  start, kept = _live_rss_kb(), []
  for i in range(updates):
    policy.update(dirs[i % 2])
    if keep_models:
      kept.append(compiled.CompiledPolicy(dirs[i % 2]))
  growth = _live_rss_kb() - start
  gc.collect()
  alive = sum(1 for o in gc.get_objects() if type(o).__name__ == "_Model")
  return {"kb_per_update": growth / updates, "growth_mb": growth / 1024, "models_alive": alive}


# -- Fuzz: byte flips and truncations, manifest forged to match (mostly) ------------------


_FUZZ_FILES = (compiled_format.MANIFEST, compiled_format.POLICY, compiled_format.VALUES,
               compiled_format.FLATBUFFER)


def fuzz(seed: int, workdir: str):
  rng = random.Random(seed)
  directory = _copy(workdir, rng.choice(["q_mlp", "lstm_actor", "gaussian_actor"]))
  name = _FUZZ_FILES[seed % len(_FUZZ_FILES)]
  path = _file(directory, name)
  data = bytearray(open(path, "rb").read())
  if rng.random() < 0.2:
    del data[rng.randrange(len(data)):]
    what = "truncated"
  else:
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
      at = rng.randrange(len(data))
      data[at] = rng.randrange(256) if rng.random() < 0.5 else data[at] ^ (1 << rng.randrange(8))
    what = "flipped"
  with open(path, "wb") as f:
    f.write(bytes(data))
  if name != compiled_format.MANIFEST and rng.random() < 0.9:
    _reseal(directory)
  try:
    policy = compiled.CompiledPolicy(directory, batch_time_steps=True)
    result = _result(policy)
  finally:
    shutil.rmtree(directory, ignore_errors=True)
  result["mutation"] = f"{name} {what}"
  return result


def __getattr__(name: str):
  if name.startswith("fuzz_"):
    return functools.partial(fuzz, int(name[len("fuzz_"):]))
  raise AttributeError(name)


def update_rss_growth_keeping_models(workdir):
  """The measurement's control: a loop that keeps a model per update alive."""
  return update_rss_growth(workdir, updates=200, keep_models=True)


CASES = [name for name, value in list(globals().items())
         if callable(value) and getattr(value, "__module__", None) == __name__
         and not name.startswith("_") and name not in ("fuzz",)
         and name not in ("update_interrupted_at_every_line", "update_rss_growth",
                          "update_rss_growth_keeping_models")]
