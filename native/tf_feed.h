// The TF eager feed: validated leaves become eager tensors (lent zero-copy
// through DLPack, staged in reused tensors, or copied once), the saved
// function runs through TF's eager execute, and its outputs are packed.
//
// TensorFlow is reached only through the Python callables of the runtime dict
// that policies/saved_model/marshaling_plan.py passes; a plan without one (the LiteRT
// feeds, compiled policies) never touches this file's code.
#ifndef POLICY_RUNTIME_NATIVE_TF_FEED_H_
#define POLICY_RUNTIME_NATIVE_TF_FEED_H_

#include <pybind11/pybind11.h>

#include "native/dlpack.h"
#include "native/nest.h"
#include "native/validate.h"

namespace policy_runtime {

// Leaves at least this large are lent to TF zero-copy when they qualify; smaller
// ones are copied into a reused staging tensor, which is cheaper than making a
// new tensor (and TF 2.15 keeps ~16 bytes for every eager tensor ever created).
constexpr npy_intp kZeroCopyMinBytes = 16 * 1024;

class TfFeed {
 public:
  // `runtime`: {"from_dlpack", "eager_tensor", "context_handle", "device",
  // "execute", "attrs", "num_outputs"}; `validator` reads eager tensors of its
  // "eager_tensor" type (the Plan checks that it is a type).
  TfFeed(const Layout& layout, const Validator& validator, py::dict runtime);

  // The argument list (`num_args` tensors) that `Call` would pass. With
  // `staging`, small leaves land in reused staging tensors that the next call
  // overwrites.
  py::list Flatten(py::handle time_step, py::handle policy_state, bool staging) const;

  // Flatten + execute + pack. `function_name` and `captures` pick the loaded
  // copy of the function to run.
  py::object Call(py::handle time_step, py::handle policy_state, py::handle function_name,
                  py::tuple captures) const;

  // The function run once on many callers' rows (native/rows.h), rows from
  // len(rows) to `pad_to` zeros; its outputs as owned arrays, for PackRow.
  py::list CallRows(py::list rows, npy_intp pad_to, py::handle function_name,
                    py::tuple captures) const;

 private:
  friend class TensorSink;

  py::object Execute(const py::list& args, py::handle function_name,
                     const py::tuple& captures) const;
  py::object GatherSlot(int slot, const std::vector<PyObject*>& rows, npy_intp batch) const;
  py::object DlpackTensor(const LeafSpec& spec, LeafPtr leaf, void* data, const int64_t* shape,
                          int ndim) const;
  py::object EagerTensor(const LeafSpec& spec, PyArrayObject* arr, const int64_t* shape,
                         int ndim) const;
  py::object ToArray(PyObject* tensor, bool unbatch) const;

  const Layout& layout_;
  const Validator& validator_;
  py::object from_dlpack_, eager_tensor_, context_handle_, device_, execute_, attrs_,
      num_outputs_, numpy_method_;
  mutable StagingPool pool_;
};

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_TF_FEED_H_
