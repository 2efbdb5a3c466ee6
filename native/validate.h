// Validation of a caller's nested (time_step, policy_state) against the plan's
// layout: one walk over the layout (never over the caller's data), which
// checks every container and leaf and names the field path in each error. The
// walk hands each validated leaf to a LeafSink, which stores the argument the
// engine needs (the array itself, or a tensor: native/tf_feed.h).
#ifndef POLICY_RUNTIME_NATIVE_VALIDATE_H_
#define POLICY_RUNTIME_NATIVE_VALIDATE_H_

#include <pybind11/pybind11.h>

#include <string>

#include "native/nest.h"

namespace policy_runtime {

// Per-call state of a walk.
struct CallState {
  PyObject* args = nullptr;  // List being filled (borrowed): one item per argument slot.
  npy_intp batch = -1;       // Batch size seen so far (caller-batched leaves).
  const std::string* batch_path = nullptr;
};

// What a walk does with each validated leaf.
class LeafSink {
 public:
  virtual ~LeafSink() = default;
  // `array` is an ndarray of the leaf's dtype and shape (the caller's, or a
  // conversion of Python data); the sink sets args[spec.slot].
  virtual void Leaf(const LeafSpec& spec, py::object array, CallState* state) const = 0;
};

class Validator {
 public:
  // Eager tensors of `eager_tensor_type` are read as arrays; nullptr: no TF runtime.
  explicit Validator(PyTypeObject* eager_tensor_type);

  // Walks both trees into a new list of `layout.num_args + extra` items.
  py::list Walk(const Layout& layout, py::handle time_step, py::handle policy_state,
                size_t extra, CallState* state, const LeafSink& sink) const;

  // The validated leaves as arrays, in argument-slot order.
  py::list Arrays(const Layout& layout, py::handle time_step, py::handle policy_state,
                  CallState* state) const;

 private:
  void Visit(const Node& node, PyObject* value, CallState* state, const LeafSink& sink) const;
  void VisitNamedTuple(const Node& node, PyObject* value, CallState* state,
                       const LeafSink& sink) const;
  void VisitDict(const Node& node, PyObject* value, CallState* state, const LeafSink& sink) const;
  void VisitSequence(const Node& node, PyObject* value, CallState* state,
                     const LeafSink& sink) const;
  void VisitLeaf(const Node& node, PyObject* value, CallState* state, const LeafSink& sink) const;
  py::object AsArray(const Node& node, PyObject* value, npy_intp batch_hint) const;

  PyTypeObject* eager_tensor_type_;  // Borrowed from the plan's runtime, or nullptr.
  py::object numpy_method_, from_dlpack_, mapping_type_, sequence_type_;
};

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_VALIDATE_H_
