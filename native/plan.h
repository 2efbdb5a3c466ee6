// A Plan: one policy's layout (native/nest.h) compiled once, with the
// validator and the feeds that use it. Per call it walks the plan, not the
// user's data, so the work and recursion depth are bounded by the plan.
#ifndef POLICY_RUNTIME_NATIVE_PLAN_H_
#define POLICY_RUNTIME_NATIVE_PLAN_H_

#include <pybind11/pybind11.h>

#include <memory>

#include "native/lite_feed.h"
#include "native/nest.h"
#include "native/tf_feed.h"
#include "native/validate.h"

namespace policy_runtime {

class Plan {
 public:
  // `runtime`: TF's eager entry points (native/tf_feed.h), or None for a plan
  // that feeds buffer engines only and needs no TensorFlow.
  Plan(py::tuple time_step_tree, py::tuple state_tree, py::tuple output_tree, int num_args,
       py::object runtime);

  py::list Flatten(py::handle time_step, py::handle policy_state, bool staging) const {
    return Tf("flatten").Flatten(time_step, policy_state, staging);
  }
  py::object Call(py::handle time_step, py::handle policy_state, py::handle function_name,
                  py::tuple captures) const {
    return Tf("call").Call(time_step, policy_state, function_name, captures);
  }
  py::list CallRows(py::list rows, npy_intp pad_to, py::handle function_name,
                    py::tuple captures) const {
    return Tf("call_rows").CallRows(rows, pad_to, function_name, captures);
  }
  // One caller's leaves, validated as `Call` validates them, as arrays in
  // argument-slot order (a row for CallRows).
  py::list Validate(py::handle time_step, py::handle policy_state) const {
    CallState state;
    return validator_.Arrays(layout_, time_step, policy_state, &state);
  }
  py::object CallBuffers(py::handle time_step, py::handle policy_state, py::handle lease,
                         py::handle release) const {
    return lite_.Call(time_step, policy_state, lease, release);
  }
  py::list CallRowsBuffers(py::list rows, npy_intp pad_to, py::handle lease,
                           py::handle release) const {
    return lite_.CallRows(rows, pad_to, lease, release);
  }
  py::object PackRow(py::list outputs, npy_intp row) const;

 private:
  const TfFeed& Tf(const char* entry) const;

  Layout layout_;
  Validator validator_;
  LiteFeed lite_;
  std::unique_ptr<TfFeed> tf_;  // null without a TF runtime
};

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_PLAN_H_
