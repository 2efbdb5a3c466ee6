// The plan's layout: the input trees (time step and policy state) with a
// LeafSpec per leaf, and the output tree, parsed once from the node encoding
// that policies/saved_model/marshaling_plan.py and policies/runtime/plan_layout.py build (see
// native/marshal.py).
#ifndef POLICY_RUNTIME_NATIVE_NEST_H_
#define POLICY_RUNTIME_NATIVE_NEST_H_

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "native/common.h"
#include "native/dlpack.h"

namespace policy_runtime {

enum class Kind { kLeaf, kNamedTuple, kDict, kSequence };

struct LeafSpec {
  int slot = 0;                     // Position in the function's argument list.
  npy_intp batch = kNoCallerBatch;  // kNoCallerBatch, kAnyBatch or a fixed size.
  std::vector<npy_intp> dims;       // Inner dims (without batch); -1 = any.
  py::object descr;                 // numpy dtype (PyArray_Descr).
  py::object tf_dtype;              // TF DataType enum, for TF's own conversion.
  bool dlpack = false;
  bool fixed_inner = true;          // No unknown inner dims: the shape is set by the batch.
  DLDataType dl_type{};
  py::object min_value, max_value;  // Integer/float range, for Python numbers; else None.

  PyArray_Descr* Descr() const { return reinterpret_cast<PyArray_Descr*>(descr.ptr()); }
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

enum class OutKind { kLeaf, kNamedTuple, kDict, kList, kTuple };

struct OutNode {
  OutKind kind = OutKind::kLeaf;
  int index = 0;
  bool unbatch = false;
  py::object type;
  std::vector<py::object> keys;
  std::vector<OutNode> children;
};

// Both input trees, the output tree, and the leaves by argument slot.
struct Layout {
  Layout(py::tuple time_step_tree, py::tuple state_tree, py::tuple output_tree, int num_args);
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;

  const LeafSpec& Slot(int slot) const { return *slot_specs[slot]; }

  Node time_step;
  Node state;
  OutNode output;
  int num_args;
  std::vector<const LeafSpec*> slot_specs;  // by argument slot, each filled (into the trees above)
  Py_ssize_t min_outputs = 0;               // outputs the output tree reads
};

// "float32[B,4]" (the batch as `batch_hint` when known).
std::string ExpectedLeaf(const LeafSpec& spec, npy_intp batch_hint);

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_NEST_H_
