#include "native/validate.h"

#include <cmath>
#include <new>
#include <sstream>

namespace policy_runtime {
namespace {

bool IsEmptyStructure(PyObject* value) {
  if (value == Py_None) return true;
  if ((PyTuple_Check(value) || PyList_Check(value)) && PySequence_Fast_GET_SIZE(value) == 0) return true;
  return PyDict_Check(value) && PyDict_Size(value) == 0;
}

// Whether a dict (sub)type's items are what its storage holds: __getitem__ not overridden.
bool ReadsLikeDict(PyTypeObject* type) {
  return type == &PyDict_Type ||
         (type->tp_as_mapping != nullptr &&
          type->tp_as_mapping->mp_subscript == PyDict_Type.tp_as_mapping->mp_subscript);
}

std::string KeysText(PyObject* dict) {
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

std::string ExtraKey(const Node& node, PyObject* dict) {
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

// The caller's object's error (not an interrupt) becomes a ValueError naming the field.
[[noreturn]] void RaiseFromObject(const std::string& path, const std::string& what) {
  if (!PyErr_ExceptionMatches(PyExc_Exception)) throw py::error_already_set();
  py::error_already_set error;
  Raise(PyExc_ValueError, path + ": " + what + ": " +
                              std::string(error.type().attr("__name__").cast<std::string>()) +
                              ": " + py::str(error.value()).cast<std::string>());
}

[[noreturn]] void RaiseFromMapping(const std::string& path, const std::string& what) {
  RaiseFromObject(path, "the mapping raised " + what);
}

// numpy's array protocols: the object converts itself (np.asarray does the same).
bool HasArrayProtocol(PyObject* value) {
  return PyObject_HasAttrString(value, "__array__") ||
         PyObject_HasAttrString(value, "__array_interface__") ||
         PyObject_HasAttrString(value, "__array_struct__");
}

py::object CopyMapping(const Node& node, PyObject* mapping) {
  auto keys = py::reinterpret_steal<py::object>(PyMapping_Keys(mapping));
  if (!keys) RaiseFromMapping(node.path, "on keys()");
  py::object copy = Steal(PyDict_New());
  auto seq = py::reinterpret_steal<py::object>(
      PySequence_Fast(keys.ptr(), "keys() is not iterable"));
  if (!seq) RaiseFromMapping(node.path, "on keys()");
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq.ptr()); ++i) {
    PyObject* key = PySequence_Fast_GET_ITEM(seq.ptr(), i);
    auto item = py::reinterpret_steal<py::object>(PyObject_GetItem(mapping, key));
    if (!item) {
      RaiseFromMapping(node.path + "[" + py::cast<std::string>(py::repr(key)) + "]",
                       "when read");
    }
    if (PyDict_SetItem(copy.ptr(), key, item.ptr()) < 0) throw py::error_already_set();
  }
  return copy;
}

// Python numbers are cast to the leaf's dtype only if every value fits:
// integers within its range, finite floats below its largest value.
void CheckValuesFit(const Node& node, PyArrayObject* natural, npy_intp batch_hint) {
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
                                  ", which does not fit " + DtypeName(spec.Descr()));
    }
  }
}

// Whether `arr`'s dims from `first` on are exactly the spec's inner dims.
bool MatchesInner(const LeafSpec& spec, PyArrayObject* arr, int first) {
  if (PyArray_NDIM(arr) != static_cast<int>(spec.dims.size()) + first) return false;
  for (size_t i = 0; i < spec.dims.size(); ++i)
    if (spec.dims[i] >= 0 && spec.dims[i] != PyArray_DIM(arr, i + first)) return false;
  return true;
}

void CheckShape(const Node& node, PyArrayObject* arr, CallState* state) {
  const LeafSpec& spec = node.leaf;
  int offset = spec.batch == kNoCallerBatch ? 0 : 1;
  if (!MatchesInner(spec, arr, offset)) {
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

class KeepArrays : public LeafSink {
 public:
  void Leaf(const LeafSpec& spec, py::object array, CallState* state) const override {
    PyList_SET_ITEM(state->args, spec.slot, array.release().ptr());
  }
};

}  // namespace

Validator::Validator(PyTypeObject* eager_tensor_type) : eager_tensor_type_(eager_tensor_type) {
  numpy_method_ = py::str("_numpy_internal");
  from_dlpack_ = py::module_::import("numpy").attr("from_dlpack");
  mapping_type_ = py::module_::import("collections.abc").attr("Mapping");
  sequence_type_ = py::module_::import("collections.abc").attr("Sequence");
}

py::list Validator::Walk(const Layout& layout, py::handle time_step, py::handle policy_state,
                         size_t extra, CallState* state, const LeafSink& sink) const {
  py::list args = Steal(PyList_New(layout.num_args + extra));
  state->args = args.ptr();
  Visit(layout.time_step, time_step.ptr(), state, sink);
  Visit(layout.state, policy_state.ptr(), state, sink);
  return args;
}

py::list Validator::Arrays(const Layout& layout, py::handle time_step, py::handle policy_state,
                           CallState* state) const {
  return Walk(layout, time_step, policy_state, 0, state, KeepArrays());
}

void Validator::Visit(const Node& node, PyObject* value, CallState* state,
                      const LeafSink& sink) const {
  switch (node.kind) {
    case Kind::kLeaf: return VisitLeaf(node, value, state, sink);
    case Kind::kNamedTuple: return VisitNamedTuple(node, value, state, sink);
    case Kind::kDict: return VisitDict(node, value, state, sink);
    case Kind::kSequence: return VisitSequence(node, value, state, sink);
  }
}

void Validator::VisitNamedTuple(const Node& node, PyObject* value, CallState* state,
                                const LeafSink& sink) const {
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
    Visit(node.children[i], PyTuple_GET_ITEM(value, i), state, sink);
}

void Validator::VisitDict(const Node& node, PyObject* value, CallState* state,
                          const LeafSink& sink) const {
  if (node.children.empty() && IsEmptyStructure(value)) return;
  py::object as_dict;
  // Dicts, and dict subclasses that keep dict's __getitem__ (OrderedDict, defaultdict), are
  // read from their storage, which is what __getitem__ would return.
  if (!PyDict_Check(value) || !ReadsLikeDict(Py_TYPE(value))) {
    int is_mapping = PyObject_IsInstance(value, mapping_type_.ptr());
    if (is_mapping < 0) throw py::error_already_set();
    if (!is_mapping) {
      Raise(PyExc_TypeError, node.path + ": expected a dict with keys " + node.keys_text +
                                 ", got " + TypeName(value));
    }
    // Other mappings (TF's tracking wrappers, dict subclasses with their own
    // __getitem__) are read through keys() and __getitem__ into a dict copy, as
    // TF-Agents' class reads them (its nest_utils.prune_extra_keys rebuilds them
    // from __getitem__).
    as_dict = CopyMapping(node, value);
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
    Visit(node.children[i], item, state, sink);
  }
  if (static_cast<size_t>(PyDict_Size(value)) != node.children.size()) {
    Raise(PyExc_ValueError, node.path + ": unexpected key " + ExtraKey(node, value) +
                                " (expected keys " + node.keys_text + ")");
  }
}

void Validator::VisitSequence(const Node& node, PyObject* value, CallState* state,
                              const LeafSink& sink) const {
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
    Visit(node.children[i], item.ptr(), state, sink);
  }
}

void Validator::VisitLeaf(const Node& node, PyObject* value, CallState* state,
                          const LeafSink& sink) const {
  try {
    const LeafSpec& spec = node.leaf;
    py::object held = AsArray(node, value, state->batch);
    auto* arr = reinterpret_cast<PyArrayObject*>(held.ptr());
    if (!PyArray_CanCastTypeTo(PyArray_DESCR(arr), spec.Descr(), NPY_EQUIV_CASTING)) {
      Raise(PyExc_TypeError, node.path + ": expected " + ExpectedLeaf(spec, state->batch) +
                                 ", got " + Describe(arr));
    }
    CheckShape(node, arr, state);
    sink.Leaf(spec, std::move(held), state);
  } catch (const std::bad_alloc&) {
    Raise(PyExc_ValueError, node.path + ": out of memory copying this leaf");
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_MemoryError)) throw;
    Raise(PyExc_ValueError, node.path + ": out of memory copying this leaf");
  }
}

// A strong reference to an ndarray view of `value`, converting Python scalars
// and lists; raises for anything that is not array-like.
py::object Validator::AsArray(const Node& node, PyObject* value, npy_intp batch_hint) const {
  const LeafSpec& spec = node.leaf;
  PyArray_Descr* want = spec.Descr();
  if (PyArray_Check(value)) return py::reinterpret_borrow<py::object>(value);
  if (PyArray_IsScalar(value, Generic)) return Steal(PyArray_FromScalar(value, nullptr));
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
    // Other array types (JAX, PyTorch, CuPy on the host, ...): the array they give through
    // numpy's protocols or DLPack, then checked exactly like a numpy array.
    if (HasArrayProtocol(value)) {
      PyObject* converted = PyArray_FromAny(value, nullptr, 0, 0, 0, nullptr);
      if (converted == nullptr) RaiseFromObject(node.path, "its __array__ raised");
      return Steal(converted);
    }
    if (PyObject_HasAttrString(value, "__dlpack__")) {
      PyObject* converted = PyObject_CallOneArg(from_dlpack_.ptr(), value);
      if (converted == nullptr) RaiseFromObject(node.path, "its __dlpack__ export failed");
      return Steal(converted);
    }
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
  CheckValuesFit(node, a, batch_hint);
  Py_INCREF(want);
  return Steal(PyArray_FromAny(arr.ptr(), want, 0, 0, NPY_ARRAY_DEFAULT | NPY_ARRAY_FORCECAST, nullptr));
}

}  // namespace policy_runtime
