// Native marshaler: nested numpy (time_step, policy_state) -> flat eager
// tensors -> saved `action` function -> nested numpy PolicyStep.
//
// A `Plan` is compiled once per policy from a node tree built in Python
// (see native/marshal.py for the encoding). Per call it walks the plan, not
// the user's data, so the work and recursion depth are bounded by the plan.
//
// Inputs reach TensorFlow without a copy when a leaf already has the plan's
// dtype, is C-contiguous, writeable and 64-byte aligned: the leaf is handed
// to TF as a DLPack capsule that keeps the array alive. Other leaves are
// copied once into a 64-byte aligned buffer. Outputs are copied into numpy
// arrays the caller owns: a result tensor may share its buffer with a
// variable, a constant or an input, and the caller may write to its arrays.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "native/copy_switch.h"

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#if NPY_ABI_VERSION < 0x02000000
// numpy 1.x headers: the descriptor's fields are public, and numpy 2's accessor
// (numpy/npy_2_compat.h) does not exist yet. The axis that means "all axes"
// was NPY_MAXDIMS; numpy 2 names it NPY_RAVEL_AXIS (NPY_MAXDIMS is a real axis there).
static inline npy_intp PyDataType_ELSIZE(const PyArray_Descr* descr) { return descr->elsize; }
#define NPY_RAVEL_AXIS NPY_MAXDIMS
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

constexpr size_t kAlignment = 64;  // What TF's DLPack import requires.
constexpr npy_intp kNoCallerBatch = -2;  // Leaf comes unbatched; add a batch of 1.
constexpr npy_intp kAnyBatch = -1;       // Leaf comes batched; any consistent size.
// Leaves at least this large are lent to TF zero-copy when they qualify; smaller
// ones are copied into a reused staging tensor, which is cheaper than making a
// new tensor (and TF 2.15 keeps ~16 bytes for every eager tensor ever created).
constexpr npy_intp kZeroCopyMinBytes = 16 * 1024;
constexpr size_t kMaxPooledStagings = 16;

// ---------------------------------------------------------------------------
// DLPack (v0.x ABI, as TensorFlow 2.15 consumes it).

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

constexpr int32_t kDLCPU = 1;
constexpr uint8_t kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLComplex = 5;
constexpr const char* kDlTensorName = "dltensor";

// One allocation per exported leaf: the DLPack struct, its shape, and either
// an owned numpy array (zero-copy) or an owned aligned buffer (copy).
struct ExportedLeaf {
  DLManagedTensor managed;
  int64_t shape[NPY_MAXDIMS + 1];
  PyObject* array;  // Strong reference, or nullptr.
  void* buffer;     // From aligned_alloc, or nullptr.
};

// Leaves handed to TF and not yet released (for leak tests).
std::atomic<int64_t> g_live_leaves{0};

void DeleteExportedLeaf(DLManagedTensor* managed) {
  g_live_leaves.fetch_sub(1, std::memory_order_relaxed);
  auto* leaf = reinterpret_cast<ExportedLeaf*>(managed);
  if (leaf->array != nullptr && Py_IsInitialized()) {
    // TF may release the buffer from one of its own threads.
    PyGILState_STATE state = PyGILState_Ensure();
    Py_DECREF(leaf->array);
    PyGILState_Release(state);
  }
  std::free(leaf->buffer);
  delete leaf;
}

struct LeafDeleter {
  void operator()(ExportedLeaf* leaf) const { DeleteExportedLeaf(&leaf->managed); }
};
using LeafPtr = std::unique_ptr<ExportedLeaf, LeafDeleter>;

LeafPtr NewExportedLeaf() {
  auto* leaf = new ExportedLeaf();  // value-initialized: all null
  g_live_leaves.fetch_add(1, std::memory_order_relaxed);
  return LeafPtr(leaf);
}

void DestroyUnconsumedCapsule(PyObject* capsule) {
  // TF renames consumed capsules and takes over the deleter.
  if (!PyCapsule_IsValid(capsule, kDlTensorName)) return;
  auto* managed =
      static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kDlTensorName));
  if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
}

bool DlpackType(int type_num, int itemsize, DLDataType* out) {
  uint8_t code;
  switch (type_num) {
    case NPY_BYTE: case NPY_SHORT: case NPY_INT: case NPY_LONG: case NPY_LONGLONG:
      code = kDLInt; break;
    case NPY_UBYTE: case NPY_USHORT: case NPY_UINT: case NPY_ULONG: case NPY_ULONGLONG:
      code = kDLUInt; break;
    case NPY_HALF: case NPY_FLOAT: case NPY_DOUBLE:
      code = kDLFloat; break;
    case NPY_CFLOAT: case NPY_CDOUBLE:
      code = kDLComplex; break;
    default:
      return false;  // bool, strings, objects: TF's own conversion.
  }
  *out = DLDataType{code, static_cast<uint8_t>(itemsize * 8), 1};
  return true;
}

// ---------------------------------------------------------------------------
// Small helpers.

py::object Steal(PyObject* p) {
  if (p == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(p);
}

bool IsAligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % kAlignment == 0;
}

std::string DtypeName(PyArray_Descr* descr) {
  py::object str = Steal(PyObject_Str(reinterpret_cast<PyObject*>(descr)));
  return py::cast<std::string>(str);
}

std::string TypeName(PyObject* obj) {
  if (obj == Py_None) return "None";
  return Py_TYPE(obj)->tp_name;
}

std::string Describe(PyArrayObject* arr) {
  std::ostringstream out;
  out << DtypeName(PyArray_DESCR(arr)) << "[";
  for (int i = 0; i < PyArray_NDIM(arr); ++i) {
    if (i) out << ",";
    out << PyArray_DIM(arr, i);
  }
  out << "]";
  return out.str();
}

[[noreturn]] void Raise(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw py::error_already_set();
}

// ---------------------------------------------------------------------------
// Plan nodes.

enum class Kind { kLeaf, kNamedTuple, kDict, kSequence };

struct LeafSpec {
  int slot = 0;                // Position in the function's argument list.
  npy_intp batch = kNoCallerBatch;  // kNoCallerBatch, kAnyBatch or a fixed size.
  std::vector<npy_intp> dims;  // Inner dims (without batch); -1 = any.
  py::object descr;            // numpy dtype (PyArray_Descr).
  py::object tf_dtype;         // TF DataType enum, for the fallback path.
  bool dlpack = false;
  bool fixed_inner = true;     // No unknown inner dims: the shape is set by the batch.
  DLDataType dl_type{};
  py::object min_value, max_value;  // Integer/float range, for Python numbers; else None.
};

struct Node {
  Kind kind = Kind::kLeaf;
  std::string path;
  std::vector<Node> children;
  std::vector<py::object> keys;       // kDict: sorted keys.
  std::string keys_text;              // kDict: "'a', 'b'" for messages.
  py::object fields;                  // kNamedTuple: tuple of field names.
  std::string type_name;              // kNamedTuple: e.g. "TimeStep".
  mutable PyTypeObject* accepted_type = nullptr;  // Cached namedtuple match.
  mutable py::object accepted_type_ref;
  LeafSpec leaf;
};

std::string ExpectedLeaf(const LeafSpec& spec, npy_intp batch_hint) {
  std::ostringstream out;
  out << DtypeName(reinterpret_cast<PyArray_Descr*>(spec.descr.ptr())) << "[";
  bool first = true;
  if (spec.batch != kNoCallerBatch) {
    if (spec.batch >= 0) out << spec.batch;
    else if (batch_hint >= 0) out << batch_hint;
    else out << "B";
    first = false;
  }
  for (npy_intp d : spec.dims) {
    if (!first) out << ",";
    first = false;
    if (d < 0) out << "?"; else out << d;
  }
  out << "]";
  return out.str();
}

Node ParseNode(py::handle node);

Node ParseLeaf(const py::tuple& t) {
  // ("leaf", path, slot, numpy_dtype, inner_dims, batch, tf_dtype_enum)
  Node node;
  node.kind = Kind::kLeaf;
  node.path = py::cast<std::string>(t[1]);
  node.leaf.slot = py::cast<int>(t[2]);
  PyArray_Descr* descr = nullptr;
  if (!PyArray_DescrConverter(t[3].ptr(), &descr)) throw py::error_already_set();
  node.leaf.descr = Steal(reinterpret_cast<PyObject*>(descr));
  for (auto d : py::cast<py::tuple>(t[4])) node.leaf.dims.push_back(py::cast<npy_intp>(d));
  if (node.leaf.dims.size() > NPY_MAXDIMS - 1) throw py::value_error(node.path + ": too many dimensions");
  node.leaf.batch = py::cast<npy_intp>(t[5]);
  for (npy_intp d : node.leaf.dims) node.leaf.fixed_inner = node.leaf.fixed_inner && d >= 0;
  node.leaf.tf_dtype = py::reinterpret_borrow<py::object>(t[6]);
  node.leaf.dlpack = descr->byteorder != '>' &&
                     DlpackType(descr->type_num, PyDataType_ELSIZE(descr), &node.leaf.dl_type);
  const char* info = PyTypeNum_ISINTEGER(descr->type_num) ? "iinfo"
                     : PyTypeNum_ISFLOAT(descr->type_num) ? "finfo" : nullptr;
  if (info != nullptr) {
    py::object limits = py::module_::import("numpy").attr(info)(node.leaf.descr);
    node.leaf.min_value = limits.attr("min");
    node.leaf.max_value = limits.attr("max");
  }
  return node;
}

Node ParseNode(py::handle handle) {
  py::tuple t = py::cast<py::tuple>(handle);
  std::string kind = py::cast<std::string>(t[0]);
  if (kind == "leaf") return ParseLeaf(t);
  Node node;
  node.path = py::cast<std::string>(t[1]);
  for (auto child : py::cast<py::tuple>(t[2])) node.children.push_back(ParseNode(child));
  if (kind == "namedtuple") {
    // ("namedtuple", path, children, fields, type_name)
    node.kind = Kind::kNamedTuple;
    node.fields = py::reinterpret_borrow<py::object>(t[3]);
    node.type_name = py::cast<std::string>(t[4]);
  } else if (kind == "dict") {
    // ("dict", path, children, sorted_keys)
    node.kind = Kind::kDict;
    std::ostringstream text;
    for (auto key : py::cast<py::tuple>(t[3])) {
      if (!node.keys.empty()) text << ", ";
      text << py::cast<std::string>(py::repr(key));
      node.keys.push_back(py::reinterpret_borrow<py::object>(key));
    }
    node.keys_text = text.str();
  } else if (kind == "sequence") {
    // ("sequence", path, children)
    node.kind = Kind::kSequence;
  } else {
    throw py::value_error("unknown plan node kind: " + kind);
  }
  return node;
}

// Output nodes: ("leaf", index, unbatch) | ("namedtuple", type, children) |
// ("dict", keys, children) | ("list", children) | ("tuple", children).
enum class OutKind { kLeaf, kNamedTuple, kDict, kList, kTuple };

struct OutNode {
  OutKind kind = OutKind::kLeaf;
  int index = 0;
  bool unbatch = false;
  py::object type;
  std::vector<py::object> keys;
  std::vector<OutNode> children;
};

OutNode ParseOutNode(py::handle handle) {
  py::tuple t = py::cast<py::tuple>(handle);
  std::string kind = py::cast<std::string>(t[0]);
  OutNode node;
  if (kind == "leaf") {
    node.kind = OutKind::kLeaf;
    node.index = py::cast<int>(t[1]);
    node.unbatch = py::cast<bool>(t[2]);
    return node;
  }
  py::tuple children;
  if (kind == "namedtuple") {
    node.kind = OutKind::kNamedTuple;
    node.type = py::reinterpret_borrow<py::object>(t[1]);
    children = py::cast<py::tuple>(t[2]);
  } else if (kind == "dict") {
    node.kind = OutKind::kDict;
    for (auto key : py::cast<py::tuple>(t[1])) node.keys.push_back(py::reinterpret_borrow<py::object>(key));
    children = py::cast<py::tuple>(t[2]);
  } else if (kind == "list" || kind == "tuple") {
    node.kind = kind == "list" ? OutKind::kList : OutKind::kTuple;
    children = py::cast<py::tuple>(t[1]);
  } else {
    throw py::value_error("unknown output node kind: " + kind);
  }
  for (auto child : children) node.children.push_back(ParseOutNode(child));
  if (node.kind == OutKind::kDict && node.keys.size() != node.children.size())
    throw py::value_error("dict output node: keys and children differ in length");
  return node;
}

// ---------------------------------------------------------------------------
// Per-call state.

// Reused input tensors for one batch size: one per stageable slot, each
// aliasing an aligned buffer that calls copy their leaf into.
struct StagedLeaf {
  void* data = nullptr;
  py::object tensor;
};
struct Staging {
  npy_intp batch = 0;
  std::vector<StagedLeaf> leaves;  // by argument slot
};

struct CallState {
  PyObject* args = nullptr;     // list being filled (borrowed).
  npy_intp batch = -1;          // Batch size seen so far (caller-batched leaves).
  const std::string* batch_path = nullptr;
  bool validate_only = false;   // Collect the validated arrays, make no tensors.
  bool use_staging = false;
  std::unique_ptr<Staging> staging;  // leased from the plan's pool
};

class Plan {
 public:
  Plan(py::tuple time_step_tree, py::tuple state_tree, py::tuple output_tree,
       int num_args, py::object runtime)
      : time_step_(ParseNode(time_step_tree)),
        state_(ParseNode(state_tree)),
        output_(ParseOutNode(output_tree)),
        num_args_(num_args) {
    slot_specs_.assign(num_args_, nullptr);
    CollectSlots(time_step_);
    CollectSlots(state_);
    min_outputs_ = MaxOutputIndex(output_) + 1;
    // No runtime (None): a plan for buffer engines only, which needs no TensorFlow.
    if (!runtime.is_none()) {
      py::dict tf = runtime.cast<py::dict>();
      from_dlpack_ = tf["from_dlpack"];
      eager_tensor_ = tf["eager_tensor"];
      context_handle_ = tf["context_handle"];
      device_ = tf["device"];
      execute_ = tf["execute"];
      attrs_ = tf["attrs"];
      num_outputs_ = tf["num_outputs"];
      if (!PyType_Check(eager_tensor_.ptr())) throw py::type_error("runtime: eager_tensor must be a type");
      eager_tensor_type_ = reinterpret_cast<PyTypeObject*>(eager_tensor_.ptr());
    }
    numpy_method_ = py::str("_numpy_internal");
    mapping_type_ = py::module_::import("collections.abc").attr("Mapping");
    sequence_type_ = py::module_::import("collections.abc").attr("Sequence");
  }

  // Validates and converts: the argument list (`num_args` tensors) `Call` would pass. With `staging`, small leaves land in
  // the plan's reused staging tensors, which the next call overwrites.
  py::list Flatten(py::handle time_step, py::handle policy_state, bool staging) const {
    RequireTensorFlow("flatten");
    CallState state;
    state.use_staging = staging;
    StagingLease lease{this, &state};
    return FlattenInto(time_step, policy_state, 0, &state);
  }

  // Flatten + execute + pack, all in one pass.
  // `function_name` and `captures` pick the loaded copy of the function to run.
  py::object Call(py::handle time_step, py::handle policy_state, py::handle function_name,
                  py::tuple captures) const {
    RequireTensorFlow("call");
    CallState state;
    state.use_staging = true;
    StagingLease lease{this, &state};
    py::list args = FlattenInto(time_step, policy_state, captures.size(), &state);
    py::object outputs = Execute(args, function_name, captures);
    return PackTree(output_, [&](const OutNode& leaf) {
      return ToArray(PySequence_Fast_GET_ITEM(outputs.ptr(), leaf.index), leaf.unbatch);
    });
  }

  // Validates one caller's (time_step, policy_state) as `Call` would, and
  // returns its leaves as arrays in argument-slot order (for `CallRows`).
  py::list Validate(py::handle time_step, py::handle policy_state) const {
    CallState state;
    state.validate_only = true;
    return FlattenInto(time_step, policy_state, 0, &state);
  }

  // Runs an engine that computes on fixed buffers (e.g. a LiteRT interpreter)
  // on one validated call. `lease(batch)` returns `(inputs, invoke, outputs)`:
  // writable arrays over the engine's input buffers in argument-slot order, a
  // callable that runs the engine, and arrays over its output buffers in
  // output order. Each leaf is copied into its input buffer, `invoke()` runs,
  // the outputs are copied out and packed as `Call` packs them, and
  // `release(lease)` gets the lease back however the call ends.
  py::object CallBuffers(py::handle time_step, py::handle policy_state, py::handle lease,
                         py::handle release) const {
    CallState state;
    state.validate_only = true;
    py::list arrays = FlattenInto(time_step, policy_state, 0, &state);
    npy_intp batch = state.batch >= 0 ? state.batch : 1;
    return WithLease(lease, release, batch, [&](const LeaseParts& parts) {
      for (int slot = 0; slot < num_args_; ++slot) {
        FillBuffer(parts.Input(slot),
                   reinterpret_cast<PyArrayObject*>(PyList_GET_ITEM(arrays.ptr(), slot)), slot);
      }
      Steal(PyObject_CallNoArgs(parts.invoke));
      return PackTree(output_, [&](const OutNode& leaf) {
        return OwnedCopy(parts.Output(leaf.index), leaf.unbatch);
      });
    });
  }

  // `CallRows` on a buffer engine (see `CallBuffers`): row r of every input
  // buffer of `lease(batch)` is caller r's leaf, rows from len(rows) to
  // `pad_to` are zeros; returns the outputs as owned arrays, for `PackRow`.
  py::list CallRowsBuffers(py::list rows, npy_intp pad_to, py::handle lease,
                           py::handle release) const {
    std::vector<PyObject*> row_lists = RowLists(rows);
    npy_intp batch = std::max(static_cast<npy_intp>(row_lists.size()), pad_to);
    py::object result = WithLease(lease, release, batch, [&](const LeaseParts& parts) {
      for (int slot = 0; slot < num_args_; ++slot) {
        PyArrayObject* dst = parts.Input(slot);
        std::vector<npy_intp> dims = RowDims(slot, row_lists, batch);
        npy_intp want = 1;
        for (npy_intp d : dims) want *= d;
        const LeafSpec* spec = slot_specs_[slot];
        if (!PyArray_ISCARRAY(dst) || PyArray_SIZE(dst) != want ||
            !PyArray_EquivTypes(PyArray_DESCR(dst),
                                reinterpret_cast<PyArray_Descr*>(spec->descr.ptr()))) {
          throw py::value_error("call_rows_buffers: input buffer " + std::to_string(slot) +
                                " is " + Describe(dst) + ", the rows need " +
                                std::to_string(want) + " elements");
        }
        // Rows past the callers' are zeros, not a previous call's values.
        npy_intp row_bytes = PyArray_NBYTES(dst) / batch;
        npy_intp callers = static_cast<npy_intp>(row_lists.size());
        std::memset(static_cast<char*>(PyArray_DATA(dst)) + callers * row_bytes, 0,
                    static_cast<size_t>((batch - callers) * row_bytes));
        CopyRows(slot, row_lists, dst, dims);
      }
      Steal(PyObject_CallNoArgs(parts.invoke));
      py::list outputs(PyList_GET_SIZE(parts.outputs));
      for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts.outputs); ++i)
        outputs[i] = OwnedCopy(parts.Output(i), false);
      return py::object(std::move(outputs));
    });
    return py::reinterpret_steal<py::list>(result.release());
  }

  // Runs the function once on many callers' validated rows (from `Validate`
  // of a plan whose time-step leaves come unbatched and state leaves with a
  // batch of 1): row r of every batched input is caller r's leaf, rows from
  // len(rows) to `pad_to` are zeros. Returns the function's outputs as owned
  // arrays, in output order, for `PackRow`.
  py::list CallRows(py::list rows, npy_intp pad_to, py::handle function_name,
                    py::tuple captures) const {
    RequireTensorFlow("call_rows");
    std::vector<PyObject*> row_lists = RowLists(rows);
    npy_intp batch = std::max(static_cast<npy_intp>(row_lists.size()), pad_to);
    py::list args = Steal(PyList_New(num_args_ + captures.size()));
    for (int slot = 0; slot < num_args_; ++slot) {
      py::object tensor = GatherSlot(slot, row_lists, batch);
      PyList_SET_ITEM(args.ptr(), slot, tensor.release().ptr());
    }
    py::object outputs = Execute(args, function_name, captures);
    Py_ssize_t count = PySequence_Fast_GET_SIZE(outputs.ptr());
    py::list result(count);
    for (Py_ssize_t i = 0; i < count; ++i)
      result[i] = ToArray(PySequence_Fast_GET_ITEM(outputs.ptr(), i), false);
    return result;
  }

  // Row `row` of `CallRows`' outputs, packed like `Call` packs its outputs.
  py::object PackRow(py::list outputs, npy_intp row) const {
    if (PyList_GET_SIZE(outputs.ptr()) < min_outputs_)
      throw py::value_error("pack_row: outputs must come from call_rows()");
    for (auto item : outputs) {
      if (!PyArray_Check(item.ptr()))
        throw py::type_error("pack_row: outputs must come from call_rows()");
      auto* arr = reinterpret_cast<PyArrayObject*>(item.ptr());
      if (PyArray_NDIM(arr) < 1 || row < 0 || row >= PyArray_DIM(arr, 0))
        throw py::value_error("pack_row: row out of range");
    }
    return PackTree(output_, [&](const OutNode& leaf) {
      // Row `row` with a batch of 1, then (unbatch) without it, as the caller's copy.
      auto* arr = reinterpret_cast<PyArrayObject*>(PyList_GET_ITEM(outputs.ptr(), leaf.index));
      std::vector<npy_intp> dims(PyArray_DIMS(arr), PyArray_DIMS(arr) + PyArray_NDIM(arr));
      dims[0] = 1;
      PyArray_Descr* descr = PyArray_DESCR(arr);
      Py_INCREF(descr);
      py::object view = Steal(PyArray_NewFromDescr(
          &PyArray_Type, descr, PyArray_NDIM(arr), dims.data(), PyArray_STRIDES(arr),
          static_cast<char*>(PyArray_DATA(arr)) + row * PyArray_STRIDE(arr, 0),
          PyArray_FLAGS(arr) & ~NPY_ARRAY_OWNDATA, nullptr));
      Py_INCREF(arr);
      if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(view.ptr()),
                                reinterpret_cast<PyObject*>(arr)) < 0)
        throw py::error_already_set();
      return OwnedCopy(view, leaf.unbatch);
    });
  }

 private:
  void RequireTensorFlow(const char* entry) const {
    if (eager_tensor_type_ == nullptr)
      throw py::value_error(std::string(entry) +
                            ": this plan was built without a TF runtime (buffer engines only)");
  }

  static Py_ssize_t MaxOutputIndex(const OutNode& node) {
    if (node.kind == OutKind::kLeaf) {
      if (node.index < 0) throw py::value_error("output index out of range");
      return node.index;
    }
    Py_ssize_t most = -1;
    for (const OutNode& child : node.children) most = std::max(most, MaxOutputIndex(child));
    return most;
  }

  void CollectSlots(const Node& node) {
    if (node.kind == Kind::kLeaf) {
      if (node.leaf.slot < 0 || node.leaf.slot >= num_args_)
        throw py::value_error(node.path + ": argument slot out of range");
      slot_specs_[node.leaf.slot] = &node.leaf;
      return;
    }
    for (const Node& child : node.children) CollectSlots(child);
  }

  std::vector<PyObject*> RowLists(const py::list& rows) const {
    if (rows.size() == 0) throw py::value_error("call_rows: no rows");
    std::vector<PyObject*> row_lists(rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      row_lists[r] = rows[r].ptr();
      if (!PyList_Check(row_lists[r]) || PyList_GET_SIZE(row_lists[r]) != num_args_)
        throw py::value_error("call_rows: every row must come from validate()");
    }
    return row_lists;
  }

  // The batched shape of one argument slot's rows: [batch, inner dims...].
  std::vector<npy_intp> RowDims(int slot, const std::vector<PyObject*>& rows,
                                npy_intp batch) const {
    const LeafSpec* spec = slot_specs_[slot];
    if (spec == nullptr) throw py::value_error("call_rows: unused argument slot");
    int skip = spec->batch == kNoCallerBatch ? 0 : 1;  // state rows carry a batch of 1
    auto* first = reinterpret_cast<PyArrayObject*>(PyList_GET_ITEM(rows[0], slot));
    int inner_ndim = PyArray_NDIM(first) - skip;
    if (inner_ndim < 0) throw py::value_error("call_rows: rows of one leaf differ in shape");
    std::vector<npy_intp> dims(1 + inner_ndim);
    dims[0] = batch;
    for (int i = 0; i < inner_ndim; ++i) dims[i + 1] = PyArray_DIM(first, i + skip);
    for (PyObject* row : rows) {
      auto* a = reinterpret_cast<PyArrayObject*>(PyList_GET_ITEM(row, slot));
      bool same = PyArray_NDIM(a) == inner_ndim + skip;
      for (int i = 0; same && i < inner_ndim; ++i) same = PyArray_DIM(a, i + skip) == dims[i + 1];
      if (!same) throw py::value_error("call_rows: rows of one leaf differ in shape");
    }
    return dims;
  }

  // Copies caller r's leaf of `slot` into row r of `out` (C-contiguous,
  // `dims` elements, the slot's dtype).
  void CopyRows(int slot, const std::vector<PyObject*>& rows, PyArrayObject* out,
                const std::vector<npy_intp>& dims) const {
    auto* want = reinterpret_cast<PyArray_Descr*>(slot_specs_[slot]->descr.ptr());
    int inner_ndim = static_cast<int>(dims.size()) - 1;
    char* base = static_cast<char*>(PyArray_DATA(out));
    npy_intp stride = PyDataType_ELSIZE(want);
    for (int i = 0; i < inner_ndim; ++i) stride *= dims[i + 1];
    std::vector<npy_intp> strides(inner_ndim);
    for (int i = inner_ndim; i-- > 0;)
      strides[i] = i + 1 == inner_ndim ? PyDataType_ELSIZE(want) : strides[i + 1] * dims[i + 2];
    for (size_t r = 0; r < rows.size(); ++r) {
      auto* a = reinterpret_cast<PyArrayObject*>(PyList_GET_ITEM(rows[r], slot));
      if (!PyDataType_REFCHK(want) && PyArray_IS_C_CONTIGUOUS(a) && PyArray_ISNOTSWAPPED(a) &&
          PyArray_EquivTypes(PyArray_DESCR(a), want) && PyArray_NBYTES(a) == stride) {
        std::memcpy(base + r * stride, PyArray_DATA(a), static_cast<size_t>(stride));
        continue;
      }
      Py_INCREF(want);
      py::object dst = Steal(PyArray_NewFromDescr(&PyArray_Type, want, inner_ndim, dims.data() + 1,
                                                  strides.data(), base + r * stride,
                                                  NPY_ARRAY_CARRAY, nullptr));
      Py_INCREF(out);
      if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(dst.ptr()),
                                reinterpret_cast<PyObject*>(out)) < 0)
        throw py::error_already_set();
      PyArray_Dims shape{const_cast<npy_intp*>(dims.data()) + 1, inner_ndim};
      py::object src = Steal(PyArray_Newshape(a, &shape, NPY_ANYORDER));
      if (PyArray_CopyInto(reinterpret_cast<PyArrayObject*>(dst.ptr()),
                           reinterpret_cast<PyArrayObject*>(src.ptr())) < 0)
        throw py::error_already_set();
    }
  }

  // Caller rows of one argument slot, stacked into a batched input tensor.
  py::object GatherSlot(int slot, const std::vector<PyObject*>& rows, npy_intp batch) const {
    const LeafSpec* spec = slot_specs_[slot];
    std::vector<npy_intp> dims = RowDims(slot, rows, batch);
    int inner_ndim = static_cast<int>(dims.size()) - 1;
    auto* want = reinterpret_cast<PyArray_Descr*>(spec->descr.ptr());
    Py_INCREF(want);
    py::object stacked;
    void* buffer = nullptr;
    LeafPtr leaf;
    if (spec->dlpack) {
      npy_intp row_bytes = PyDataType_ELSIZE(want);
      for (int i = 0; i < inner_ndim; ++i) row_bytes *= dims[i + 1];
      leaf = NewExportedLeaf();
      leaf->buffer = AlignedAlloc(row_bytes * batch);
      buffer = leaf->buffer;
      std::memset(buffer, 0, static_cast<size_t>(row_bytes * batch));
      stacked = Steal(PyArray_NewFromDescr(&PyArray_Type, want, 1 + inner_ndim, dims.data(),
                                           nullptr, buffer, NPY_ARRAY_CARRAY, nullptr));
    } else {
      stacked = Steal(PyArray_Zeros(1 + inner_ndim, dims.data(), want, 0));
    }
    CopyRows(slot, rows, reinterpret_cast<PyArrayObject*>(stacked.ptr()), dims);
    if (!spec->dlpack) {
      return Steal(PyObject_CallFunctionObjArgs(eager_tensor_.ptr(), stacked.ptr(), device_.ptr(),
                                                spec->tf_dtype.ptr(), nullptr));
    }
    stacked = py::object();  // the view over the buffer goes before the buffer changes hands
    int64_t shape[NPY_MAXDIMS + 1];
    for (int i = 0; i <= inner_ndim; ++i) shape[i] = dims[i];
    return DlpackTensor(*spec, std::move(leaf), buffer, shape, 1 + inner_ndim);
  }

  // The parts of a buffer engine's lease: (inputs, invoke, outputs, ...).
  struct LeaseParts {
    PyObject* inputs;
    PyObject* invoke;
    PyObject* outputs;

    PyArrayObject* Input(int slot) const {
      PyObject* a = PyList_GET_ITEM(inputs, slot);
      if (!PyArray_Check(a)) throw py::type_error("call_buffers: inputs must be arrays");
      return reinterpret_cast<PyArrayObject*>(a);
    }
    // invoke() is Python and may have changed the list.
    py::object Output(Py_ssize_t index) const {
      if (index >= PyList_GET_SIZE(outputs))
        throw py::value_error("call_buffers: the lease's output list changed size");
      PyObject* out = PyList_GET_ITEM(outputs, index);
      if (!PyArray_Check(out)) throw py::type_error("call_buffers: outputs must be arrays");
      return py::reinterpret_borrow<py::object>(out);
    }
  };

  // lease(batch), run(parts), release(lease) however run ends; run's error
  // wins over one from release().
  template <typename Run>
  py::object WithLease(py::handle lease, py::handle release, npy_intp batch, Run run) const {
    py::object leased = Steal(PyObject_CallFunction(lease.ptr(), "n", batch));
    py::object result;
    try {
      PyObject* t = leased.ptr();
      if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 3)
        throw py::type_error("call_buffers: lease(batch) must return (inputs, invoke, outputs)");
      // The tuple holds references to its parts for as long as `leased` lives.
      LeaseParts parts{PyTuple_GET_ITEM(t, 0), PyTuple_GET_ITEM(t, 1), PyTuple_GET_ITEM(t, 2)};
      if (!PyList_Check(parts.inputs) || PyList_GET_SIZE(parts.inputs) != num_args_ ||
          !PyList_Check(parts.outputs) || PyList_GET_SIZE(parts.outputs) < min_outputs_)
        throw py::value_error("call_buffers: the lease's input or output list has the wrong length");
      result = run(parts);
    } catch (...) {
      PyObject* ok = PyObject_CallOneArg(release.ptr(), leased.ptr());
      if (ok == nullptr) PyErr_Clear();
      Py_XDECREF(ok);
      throw;
    }
    Steal(PyObject_CallOneArg(release.ptr(), leased.ptr()));
    return result;
  }

  // Copies one validated leaf into its engine input buffer.
  void FillBuffer(PyArrayObject* dst, PyArrayObject* src, int slot) const {
    if (!PyArray_ISCARRAY(dst) || !PyArray_EquivTypes(PyArray_DESCR(dst), PyArray_DESCR(src)) ||
        PyArray_SIZE(dst) != PyArray_SIZE(src)) {
      throw py::value_error("call_buffers: input buffer " + std::to_string(slot) + " is " +
                            Describe(dst) + ", the validated leaf is " + Describe(src));
    }
    if (PyArray_IS_C_CONTIGUOUS(src) && PyArray_ISNOTSWAPPED(src) &&
        !PyDataType_REFCHK(PyArray_DESCR(src))) {
      std::memcpy(PyArray_DATA(dst), PyArray_DATA(src), static_cast<size_t>(PyArray_NBYTES(src)));
      return;
    }
    PyArray_Dims shape{PyArray_DIMS(dst), PyArray_NDIM(dst)};
    py::object reshaped = Steal(PyArray_Newshape(src, &shape, NPY_ANYORDER));
    if (PyArray_CopyInto(dst, reinterpret_cast<PyArrayObject*>(reshaped.ptr())) < 0)
      throw py::error_already_set();
  }

  // Appends the captures to `args` and runs the function; its outputs as a fast sequence.
  py::object Execute(const py::list& args, py::handle function_name,
                     const py::tuple& captures) const {
    for (size_t i = 0; i < captures.size(); ++i) {
      PyObject* c = captures[i].ptr();
      Py_INCREF(c);
      PyList_SET_ITEM(args.ptr(), num_args_ + i, c);
    }
    py::object outputs = Steal(PyObject_CallFunctionObjArgs(
        execute_.ptr(), context_handle_.ptr(), device_.ptr(), function_name.ptr(),
        args.ptr(), attrs_.ptr(), num_outputs_.ptr(), nullptr));
    if (!PyList_Check(outputs.ptr()) && !PyTuple_Check(outputs.ptr()))
      throw py::type_error("function outputs must be a list or tuple");
    py::object seq = Steal(PySequence_Fast(outputs.ptr(), "outputs"));
    if (PySequence_Fast_GET_SIZE(seq.ptr()) < min_outputs_)
      throw py::value_error("output index out of range");
    return seq;
  }

  // Returns a call's staging tensors to the pool however the call ends.
  struct StagingLease {
    const Plan* plan;
    CallState* state;
    ~StagingLease() { plan->ReturnStaging(std::move(state->staging)); }
  };

  std::unique_ptr<Staging> TakeStaging(npy_intp batch) const {
    for (size_t i = pool_.size(); i-- > 0;) {
      if (pool_[i]->batch == batch) {
        std::unique_ptr<Staging> staging = std::move(pool_[i]);
        pool_.erase(pool_.begin() + i);
        return staging;
      }
    }
    auto staging = std::make_unique<Staging>();
    staging->batch = batch;
    staging->leaves.resize(num_args_);
    return staging;
  }

  void ReturnStaging(std::unique_ptr<Staging> staging) const {
    if (!staging) return;
    pool_.push_back(std::move(staging));
    if (pool_.size() <= kMaxPooledStagings) return;
    // Destroy the evicted set only once the pool is consistent again: freeing
    // its tensors releases the GIL, letting other calls use the pool.
    std::unique_ptr<Staging> evicted = std::move(pool_.front());
    pool_.erase(pool_.begin());
  }

  py::list FlattenInto(py::handle time_step, py::handle policy_state,
                       size_t extra, CallState* state) const {
    py::list args = Steal(PyList_New(num_args_ + extra));
    state->args = args.ptr();
    Walk(time_step_, time_step.ptr(), state);
    Walk(state_, policy_state.ptr(), state);
    return args;
  }

  void Walk(const Node& node, PyObject* value, CallState* state) const {
    switch (node.kind) {
      case Kind::kLeaf: return ConvertLeaf(node, value, state);
      case Kind::kNamedTuple: return WalkNamedTuple(node, value, state);
      case Kind::kDict: return WalkDict(node, value, state);
      case Kind::kSequence: return WalkSequence(node, value, state);
    }
  }

  void WalkNamedTuple(const Node& node, PyObject* value, CallState* state) const {
    PyTypeObject* type = Py_TYPE(value);
    if (type != node.accepted_type) {
      bool ok = PyTuple_Check(value) && type != &PyTuple_Type;
      if (ok) {
        PyObject* fields = PyObject_GetAttrString(reinterpret_cast<PyObject*>(type), "_fields");
        if (fields == nullptr) {
          PyErr_Clear();
          ok = false;
        } else {
          int eq = PyObject_RichCompareBool(fields, node.fields.ptr(), Py_EQ);
          Py_DECREF(fields);
          if (eq < 0) PyErr_Clear();
          ok = eq == 1;
        }
      }
      if (!ok) {
        std::string fields_text = py::cast<std::string>(py::str(", ").attr("join")(node.fields));
        Raise(PyExc_TypeError, node.path + ": expected " + node.type_name + "(" +
                                   fields_text + "), got " + TypeName(value));
      }
      node.accepted_type = type;
      node.accepted_type_ref = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(type));
    }
    if (static_cast<size_t>(PyTuple_GET_SIZE(value)) != node.children.size()) {
      Raise(PyExc_ValueError, node.path + ": expected " + node.type_name + " with " +
                                  std::to_string(node.children.size()) + " fields, got " +
                                  std::to_string(PyTuple_GET_SIZE(value)));
    }
    for (size_t i = 0; i < node.children.size(); ++i)
      Walk(node.children[i], PyTuple_GET_ITEM(value, i), state);
  }

  void WalkDict(const Node& node, PyObject* value, CallState* state) const {
    if (node.children.empty() && IsEmptyStructure(value)) return;
    py::object as_dict;
    if (!PyDict_Check(value)) {
      int is_mapping = PyObject_IsInstance(value, mapping_type_.ptr());
      if (is_mapping < 0) throw py::error_already_set();
      if (!is_mapping) {
        Raise(PyExc_TypeError, node.path + ": expected a dict with keys " + node.keys_text +
                                   ", got " + TypeName(value));
      }
      // Other mappings (e.g. TF's tracking wrappers) are read through a dict copy.
      as_dict = Steal(PyDict_New());
      if (PyDict_Merge(as_dict.ptr(), value, 1) < 0) throw py::error_already_set();
      value = as_dict.ptr();
    }
    for (size_t i = 0; i < node.children.size(); ++i) {
      PyObject* item = PyDict_GetItemWithError(value, node.keys[i].ptr());
      if (item == nullptr) {
        if (PyErr_Occurred()) throw py::error_already_set();
        Raise(PyExc_ValueError, node.children[i].path + ": missing key (expected keys " +
                                    node.keys_text + ", got " + KeysText(value) + ")");
      }
      py::object hold = py::reinterpret_borrow<py::object>(item);
      Walk(node.children[i], item, state);
    }
    if (static_cast<size_t>(PyDict_Size(value)) != node.children.size()) {
      Raise(PyExc_ValueError, node.path + ": unexpected key " + ExtraKey(node, value) +
                                  " (expected keys " + node.keys_text + ")");
    }
  }

  void WalkSequence(const Node& node, PyObject* value, CallState* state) const {
    if (node.children.empty()) {
      if (IsEmptyStructure(value)) return;
      Raise(PyExc_ValueError, node.path + ": expected an empty structure ((), [] or None), got " +
                                  TypeName(value));
    }
    PyObject* original = value;
    py::object seq = py::reinterpret_borrow<py::object>(value);
    if (!PyList_CheckExact(value) && !PyTuple_Check(value)) {
      // List subclasses (e.g. TF's ListWrapper) may keep their items elsewhere.
      int is_sequence = PyList_Check(value) ? 1 : PyObject_IsInstance(value, sequence_type_.ptr());
      if (is_sequence < 0) throw py::error_already_set();
      if (!is_sequence || PyUnicode_Check(value) || PyBytes_Check(value)) {
        Raise(PyExc_TypeError, node.path + ": expected a list or tuple of " +
                                   std::to_string(node.children.size()) + ", got " + TypeName(value));
      }
      seq = Steal(PySequence_Tuple(value));
      value = seq.ptr();
    }
    Py_ssize_t size = PySequence_Fast_GET_SIZE(value);
    if (static_cast<size_t>(size) != node.children.size()) {
      Raise(PyExc_ValueError, node.path + ": expected a list or tuple of " +
                                  std::to_string(node.children.size()) + ", got " +
                                  TypeName(original) + " of " + std::to_string(size));
    }
    for (size_t i = 0; i < node.children.size(); ++i) {
      // Converting an item may run Python code that mutates the list: check
      // its size before each read and hold the item while converting it.
      if (PyList_Check(value) && PyList_GET_SIZE(value) != size)
        Raise(PyExc_ValueError, node.path + ": list changed size during the call");
      py::object item = py::reinterpret_borrow<py::object>(PySequence_Fast_GET_ITEM(value, i));
      Walk(node.children[i], item.ptr(), state);
    }
  }

  static bool IsEmptyStructure(PyObject* value) {
    if (value == Py_None) return true;
    if ((PyTuple_Check(value) || PyList_Check(value)) && PySequence_Fast_GET_SIZE(value) == 0) return true;
    return PyDict_Check(value) && PyDict_Size(value) == 0;
  }

  static std::string KeysText(PyObject* dict) {
    std::ostringstream out;
    PyObject *key, *item;
    Py_ssize_t pos = 0;
    bool first = true;
    while (PyDict_Next(dict, &pos, &key, &item)) {
      if (!first) out << ", ";
      first = false;
      out << py::cast<std::string>(py::repr(key));
    }
    return first ? std::string("no keys") : out.str();
  }

  static std::string ExtraKey(const Node& node, PyObject* dict) {
    PyObject *key, *item;
    Py_ssize_t pos = 0;
    while (PyDict_Next(dict, &pos, &key, &item)) {
      bool known = false;
      for (const auto& k : node.keys) {
        int eq = PyObject_RichCompareBool(key, k.ptr(), Py_EQ);
        if (eq < 0) PyErr_Clear();
        if (eq == 1) { known = true; break; }
      }
      if (!known) return py::cast<std::string>(py::repr(key));
    }
    return "?";
  }

  // Returns a strong reference to an ndarray view of `value`, converting
  // Python scalars and lists; raises for anything that is not array-like.
  py::object AsArray(const Node& node, PyObject* value, npy_intp batch_hint) const {
    const LeafSpec& spec = node.leaf;
    auto* want = reinterpret_cast<PyArray_Descr*>(spec.descr.ptr());
    if (PyArray_Check(value)) return py::reinterpret_borrow<py::object>(value);
    if (PyArray_IsScalar(value, Generic)) {
      return Steal(PyArray_FromScalar(value, nullptr));
    }
    if (eager_tensor_type_ != nullptr && PyObject_TypeCheck(value, eager_tensor_type_)) {
      // An eager tensor, as TF-Agents accepts: a numpy view of its buffer
      // (dtype checked like any array; the view keeps the tensor alive).
      py::object view = Steal(PyObject_CallMethodNoArgs(value, numpy_method_.ptr()));
      if (PyArray_Check(view.ptr())) return view;
      return Steal(PyArray_FromScalar(view.ptr(), nullptr));
    }
    bool python_data = PyBool_Check(value) || PyLong_Check(value) || PyFloat_Check(value) ||
                       PyList_Check(value) || PyTuple_Check(value);
    if (!python_data) {
      Raise(PyExc_TypeError, node.path + ": expected " + ExpectedLeaf(spec, batch_hint) +
                                 ", got " + TypeName(value));
    }
    PyObject* natural = PyArray_FromAny(value, nullptr, 0, 0, 0, nullptr);
    if (natural == nullptr) {
      PyErr_Clear();
      Raise(PyExc_ValueError, node.path + ": expected " + ExpectedLeaf(spec, batch_hint) +
                                  ", got a " + TypeName(value) + " that is not a regular array");
    }
    py::object arr = Steal(natural);
    auto* a = reinterpret_cast<PyArrayObject*>(arr.ptr());
    // Python numbers follow numpy's same-kind rule (int -> float is fine,
    // float -> int is not), except that ints fill any integer leaf; either way
    // the values must fit (CheckValuesFit). numpy arrays must match exactly.
    bool int_to_int = PyTypeNum_ISINTEGER(PyArray_TYPE(a)) && PyTypeNum_ISINTEGER(want->type_num);
    if ((!int_to_int && !PyArray_CanCastTypeTo(PyArray_DESCR(a), want, NPY_SAME_KIND_CASTING)) ||
        PyArray_TYPE(a) == NPY_OBJECT) {
      Raise(PyExc_TypeError, node.path + ": expected " + ExpectedLeaf(spec, batch_hint) +
                                 ", got " + TypeName(value) + " of " + Describe(a));
    }
    CheckValuesFit(node, a, want, batch_hint);
    Py_INCREF(want);
    return Steal(PyArray_FromAny(arr.ptr(), want, 0, 0, NPY_ARRAY_DEFAULT | NPY_ARRAY_FORCECAST, nullptr));
  }

  // Python numbers are cast to the leaf's dtype only if every value fits:
  // integers within its range, finite floats below its largest value.
  void CheckValuesFit(const Node& node, PyArrayObject* natural, PyArray_Descr* want,
                      npy_intp batch_hint) const {
    const LeafSpec& spec = node.leaf;
    if (!spec.min_value || PyArray_SIZE(natural) == 0 || PyArray_TYPE(natural) == NPY_BOOL ||
        PyArray_ISCOMPLEX(natural))
      return;
    py::object lo = Steal(PyArray_Min(natural, NPY_RAVEL_AXIS, nullptr));
    py::object hi = Steal(PyArray_Max(natural, NPY_RAVEL_AXIS, nullptr));
    // NaN compares false both ways and passes: it is a float32 value too.
    int below = PyObject_RichCompareBool(lo.ptr(), spec.min_value.ptr(), Py_LT);
    int above = PyObject_RichCompareBool(hi.ptr(), spec.max_value.ptr(), Py_GT);
    if (below < 0 || above < 0) throw py::error_already_set();
    if (below || above) {
      bool is_inf = PyTypeNum_ISFLOAT(PyArray_TYPE(natural)) &&
                    (std::isinf(py::cast<double>(lo)) || std::isinf(py::cast<double>(hi)));
      if (!is_inf) {
        Raise(PyExc_ValueError, node.path + ": expected " + ExpectedLeaf(spec, batch_hint) +
                                    ", got " + py::cast<std::string>(py::str(below ? lo : hi)) +
                                    ", which does not fit " + DtypeName(want));
      }
    }
  }

  void ConvertLeaf(const Node& node, PyObject* value, CallState* state) const {
    try {
      ConvertLeafOrThrow(node, value, state);
    } catch (const std::bad_alloc&) {
      Raise(PyExc_ValueError, node.path + ": out of memory copying this leaf");
    } catch (py::error_already_set& e) {
      if (!e.matches(PyExc_MemoryError)) throw;
      Raise(PyExc_ValueError, node.path + ": out of memory copying this leaf");
    }
  }

  void ConvertLeafOrThrow(const Node& node, PyObject* value, CallState* state) const {
    const LeafSpec& spec = node.leaf;
    auto* want = reinterpret_cast<PyArray_Descr*>(spec.descr.ptr());
    py::object held = AsArray(node, value, state->batch);
    auto* arr = reinterpret_cast<PyArrayObject*>(held.ptr());

    if (!PyArray_CanCastTypeTo(PyArray_DESCR(arr), want, NPY_EQUIV_CASTING)) {
      Raise(PyExc_TypeError, node.path + ": expected " + ExpectedLeaf(spec, state->batch) +
                                 ", got " + Describe(arr));
    }
    CheckShape(node, arr, state);
    if (state->validate_only) {
      PyList_SET_ITEM(state->args, spec.slot, held.release().ptr());
      return;
    }

    // Target shape: the caller's, with a leading 1 when we add the batch.
    int ndim = PyArray_NDIM(arr);
    int offset = spec.batch == kNoCallerBatch ? 1 : 0;
    int out_ndim = ndim + offset;
    npy_intp nbytes = PyArray_NBYTES(arr);

    int64_t shape[NPY_MAXDIMS + 1];
    shape[0] = 1;
    for (int i = 0; i < ndim; ++i) shape[i + offset] = PyArray_DIM(arr, i);

    bool zero_copy = spec.dlpack && nbytes > 0 && PyArray_IS_C_CONTIGUOUS(arr) &&
                     PyArray_ISWRITEABLE(arr) && PyArray_ISNOTSWAPPED(arr) &&
                     IsAligned(PyArray_DATA(arr));
    py::object tensor;
    if (!spec.dlpack) {
      tensor = FallbackTensor(spec, arr, shape, out_ndim);
    } else if (state->use_staging && spec.fixed_inner && !(zero_copy && nbytes >= kZeroCopyMinBytes)) {
      npy_intp batch = static_cast<npy_intp>(shape[0]);
      if (!state->staging) state->staging = TakeStaging(batch);
      StagedLeaf& staged = state->staging->leaves[spec.slot];
      if (!staged.tensor) {
        LeafPtr leaf = NewExportedLeaf();
        leaf->buffer = AlignedAlloc(nbytes);
        staged.data = leaf->buffer;
        staged.tensor = DlpackTensor(spec, std::move(leaf), staged.data, shape, out_ndim);
      }
      Fill(arr, staged.data, want);
      tensor = staged.tensor;
    } else {
      LeafPtr leaf = NewExportedLeaf();
      void* data;
      if (zero_copy) {
        data = PyArray_DATA(arr);
        leaf->array = held.ptr();
        Py_INCREF(leaf->array);
      } else {
        leaf->buffer = AlignedAlloc(nbytes);
        Fill(arr, leaf->buffer, want);
        data = leaf->buffer;
      }
      tensor = DlpackTensor(spec, std::move(leaf), data, shape, out_ndim);
    }
    PyList_SET_ITEM(state->args, spec.slot, tensor.release().ptr());
  }

  void CheckShape(const Node& node, PyArrayObject* arr, CallState* state) const {
    const LeafSpec& spec = node.leaf;
    int offset = spec.batch == kNoCallerBatch ? 0 : 1;
    int ndim = PyArray_NDIM(arr);
    bool ok = ndim == static_cast<int>(spec.dims.size()) + offset;
    for (size_t i = 0; ok && i < spec.dims.size(); ++i)
      ok = spec.dims[i] < 0 || spec.dims[i] == PyArray_DIM(arr, i + offset);
    if (!ok) {
      std::string hint;
      if (spec.batch == kNoCallerBatch && MatchesInner(spec, arr, 1))
        hint = " (a batched step? this policy was created with batch_time_steps=True)";
      if (spec.batch != kNoCallerBatch && MatchesInner(spec, arr, 0))
        hint = " (missing the batch dimension)";
      Raise(PyExc_ValueError, node.path + ": expected " + ExpectedLeaf(spec, state->batch) +
                                  ", got " + Describe(arr) + hint);
    }
    if (spec.batch == kNoCallerBatch) return;
    npy_intp batch = PyArray_DIM(arr, 0);
    if (spec.batch >= 0 && batch != spec.batch) {
      Raise(PyExc_ValueError, node.path + ": expected " + ExpectedLeaf(spec, state->batch) +
                                  ", got " + Describe(arr) + " (batch size " +
                                  std::to_string(spec.batch) + " is fixed)");
    }
    if (spec.batch == kAnyBatch) {
      if (state->batch_path == nullptr) {
        state->batch = batch;
        state->batch_path = &node.path;
      } else if (batch != state->batch) {
        Raise(PyExc_ValueError, node.path + ": expected " + ExpectedLeaf(spec, state->batch) +
                                    ", got " + Describe(arr) + " (batch size differs from " +
                                    *state->batch_path + ")");
      }
    }
  }

  // Whether `arr`'s dims from `first` on are exactly the spec's inner dims.
  static bool MatchesInner(const LeafSpec& spec, PyArrayObject* arr, int first) {
    if (PyArray_NDIM(arr) != static_cast<int>(spec.dims.size()) + first) return false;
    for (size_t i = 0; i < spec.dims.size(); ++i)
      if (spec.dims[i] >= 0 && spec.dims[i] != PyArray_DIM(arr, i + first)) return false;
    return true;
  }

  static void* AlignedAlloc(npy_intp nbytes) {
    size_t size = (static_cast<size_t>(nbytes) + kAlignment - 1) / kAlignment * kAlignment;
    void* buffer = std::aligned_alloc(kAlignment, size == 0 ? kAlignment : size);
    if (buffer == nullptr) throw std::bad_alloc();
    return buffer;
  }

  // Copies `arr` (already validated against the plan) into a C-ordered buffer.
  static void Fill(PyArrayObject* arr, void* buffer, PyArray_Descr* want) {
    if (PyArray_IS_C_CONTIGUOUS(arr) && PyArray_ISNOTSWAPPED(arr)) {
      std::memcpy(buffer, PyArray_DATA(arr), static_cast<size_t>(PyArray_NBYTES(arr)));
    } else {
      CopyInto(arr, buffer, want);
    }
  }

  // An eager tensor over `data` (owned by `leaf`: a lent array or a buffer).
  py::object DlpackTensor(const LeafSpec& spec, LeafPtr leaf, void* data, const int64_t* shape,
                          int ndim) const {
    std::memcpy(leaf->shape, shape, sizeof(int64_t) * ndim);
    DLTensor& t = leaf->managed.dl_tensor;
    t.data = data;
    t.device = DLDevice{kDLCPU, 0};
    t.ndim = ndim;
    t.dtype = spec.dl_type;
    t.shape = leaf->shape;
    t.strides = nullptr;
    t.byte_offset = 0;
    leaf->managed.deleter = DeleteExportedLeaf;
    PyObject* capsule = PyCapsule_New(&leaf->managed, kDlTensorName, DestroyUnconsumedCapsule);
    if (capsule == nullptr) throw py::error_already_set();
    leaf.release();  // The capsule, then TF, owns it now.
    py::object owned_capsule = Steal(capsule);
    return Steal(PyObject_CallFunctionObjArgs(from_dlpack_.ptr(), capsule,
                                              context_handle_.ptr(), nullptr));
  }

  static void CopyInto(PyArrayObject* src, void* buffer, PyArray_Descr* descr) {
    Py_INCREF(descr);
    PyObject* dst = PyArray_NewFromDescr(&PyArray_Type, descr, PyArray_NDIM(src),
                                         PyArray_DIMS(src), nullptr, buffer,
                                         NPY_ARRAY_CARRAY, nullptr);
    py::object hold = Steal(dst);
    if (PyArray_CopyInto(reinterpret_cast<PyArrayObject*>(dst), src) < 0) {
      throw py::error_already_set();
    }
  }

  py::object FallbackTensor(const LeafSpec& spec, PyArrayObject* arr, int64_t* shape,
                            int ndim) const {
    std::vector<npy_intp> dims(shape, shape + ndim);
    PyArray_Dims newshape{dims.data(), ndim};
    auto* want = reinterpret_cast<PyArray_Descr*>(spec.descr.ptr());
    Py_INCREF(want);
    py::object contiguous = Steal(PyArray_FromAny(reinterpret_cast<PyObject*>(arr), want, 0, 0,
                                                  NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, nullptr));
    py::object shaped = Steal(PyArray_Newshape(
        reinterpret_cast<PyArrayObject*>(contiguous.ptr()), &newshape, NPY_CORDER));
    return Steal(PyObject_CallFunctionObjArgs(eager_tensor_.ptr(), shaped.ptr(), device_.ptr(),
                                              spec.tf_dtype.ptr(), nullptr));
  }

  // --- outputs -------------------------------------------------------------

  // The output nest, with `leaf(node)` at every leaf.
  template <typename Leaf>
  py::object PackTree(const OutNode& node, const Leaf& leaf) const {
    switch (node.kind) {
      case OutKind::kLeaf:
        return leaf(node);
      case OutKind::kDict: {
        py::dict result;
        for (size_t i = 0; i < node.children.size(); ++i)
          result[node.keys[i]] = PackTree(node.children[i], leaf);
        return std::move(result);
      }
      case OutKind::kList: {
        py::list result(node.children.size());
        for (size_t i = 0; i < node.children.size(); ++i)
          result[i] = PackTree(node.children[i], leaf);
        return std::move(result);
      }
      case OutKind::kTuple:
      case OutKind::kNamedTuple: {
        py::tuple items(node.children.size());
        for (size_t i = 0; i < node.children.size(); ++i)
          items[i] = PackTree(node.children[i], leaf);
        if (node.kind == OutKind::kTuple) return std::move(items);
        // tuple.__new__(cls, items): builds the namedtuple without its Python __new__.
        py::tuple args = py::make_tuple(items);
        return Steal(PyTuple_Type.tp_new(reinterpret_cast<PyTypeObject*>(node.type.ptr()),
                                         args.ptr(), nullptr));
      }
    }
    throw py::value_error("bad output node");
  }

  // A numpy array the caller owns, with the tensor's values (minus the batch
  // dimension with `unbatch`). The tensor's buffer may be a variable's, a
  // constant's or an input's, so it is always copied.
  py::object ToArray(PyObject* tensor, bool unbatch) const {
    py::object value = Steal(PyObject_CallMethodNoArgs(tensor, numpy_method_.ptr()));
    if (!PyArray_Check(value.ptr())) value = Steal(PyArray_FromScalar(value.ptr(), nullptr));
    return OwnedCopy(value, unbatch);
  }

  // A C-ordered copy of the array `value`, without its leading dimension of 1
  // when `unbatch`.
  static py::object OwnedCopy(const py::object& value, bool unbatch) {
    auto* view = reinterpret_cast<PyArrayObject*>(value.ptr());
    int ndim = PyArray_NDIM(view);
    int skip = 0;
    if (unbatch) {
      if (ndim < 1 || PyArray_DIM(view, 0) != 1)
        throw py::value_error("expected an output with a batch of 1 to unbatch");
      skip = 1;
    }
    PyArray_Descr* descr = PyArray_DESCR(view);
    Py_INCREF(descr);
    py::object result = Steal(PyArray_NewFromDescr(&PyArray_Type, descr, ndim - skip,
                                                   PyArray_DIMS(view) + skip, nullptr, nullptr,
                                                   0, nullptr));
    auto* out = reinterpret_cast<PyArrayObject*>(result.ptr());
    if (!PyDataType_REFCHK(descr) && PyArray_IS_C_CONTIGUOUS(view) && PyArray_ISNOTSWAPPED(view)) {
      std::memcpy(PyArray_DATA(out), PyArray_DATA(view), static_cast<size_t>(PyArray_NBYTES(view)));
      return result;
    }
    py::object source = value;
    if (skip) {
      PyArray_Dims shape{PyArray_DIMS(out), ndim - skip};
      source = Steal(PyArray_Newshape(view, &shape, NPY_ANYORDER));
    }
    if (PyArray_CopyInto(out, reinterpret_cast<PyArrayObject*>(source.ptr())) < 0)
      throw py::error_already_set();
    return result;
  }

  std::vector<const LeafSpec*> slot_specs_;  // by argument slot (into the trees below)
  Py_ssize_t min_outputs_ = 0;                // outputs the output tree reads
  mutable std::vector<std::unique_ptr<Staging>> pool_;  // free stagings; GIL-guarded
  Node time_step_;
  Node state_;
  OutNode output_;
  int num_args_;
  py::object from_dlpack_, eager_tensor_, context_handle_, device_, numpy_method_, mapping_type_,
      sequence_type_, execute_, attrs_, num_outputs_;
  PyTypeObject* eager_tensor_type_ = nullptr;  // Borrowed from eager_tensor_.
};

}  // namespace

PYBIND11_MODULE(_marshal, m) {
  if (_import_array() < 0) throw py::error_already_set();
  m.doc() = "Native marshaling between numpy nests and a saved policy's flat tensors.";
  m.attr("ALIGNMENT") = kAlignment;
  m.attr("NO_CALLER_BATCH") = kNoCallerBatch;
  m.attr("ANY_BATCH") = kAnyBatch;
  m.attr("ZERO_COPY_MIN_BYTES") = kZeroCopyMinBytes;
  py::class_<Plan>(m, "Plan")
      .def(py::init<py::tuple, py::tuple, py::tuple, int, py::object>(),
           py::arg("time_step_tree"), py::arg("state_tree"), py::arg("output_tree"),
           py::arg("num_args"), py::arg("runtime") = py::none())
      .def("flatten", &Plan::Flatten, py::arg("time_step"), py::arg("policy_state"),
           py::arg("staging") = false)
      .def("call", &Plan::Call, py::arg("time_step"), py::arg("policy_state"),
           py::arg("function_name"), py::arg("captures"))
      .def("validate", &Plan::Validate, py::arg("time_step"), py::arg("policy_state"))
      .def("call_buffers", &Plan::CallBuffers, py::arg("time_step"), py::arg("policy_state"),
           py::arg("lease"), py::arg("release"))
      .def("call_rows", &Plan::CallRows, py::arg("rows"), py::arg("pad_to"),
           py::arg("function_name"), py::arg("captures"))
      .def("call_rows_buffers", &Plan::CallRowsBuffers, py::arg("rows"), py::arg("pad_to"),
           py::arg("lease"), py::arg("release"))
      .def("pack_row", &Plan::PackRow, py::arg("outputs"), py::arg("row"));
  policy_runtime::RegisterCopySwitch(m);
  m.def("live_exported_leaves", [] { return g_live_leaves.load(); },
        "Input buffers currently lent to TensorFlow (0 when no call is running).");
}
