#include "native/plan.h"

#include <string>

#include "native/rows.h"

namespace policy_runtime {
namespace {

PyTypeObject* EagerTensorType(const py::object& runtime) {
  if (runtime.is_none()) return nullptr;
  py::object type = runtime.cast<py::dict>()["eager_tensor"];
  if (!PyType_Check(type.ptr())) throw py::type_error("runtime: eager_tensor must be a type");
  return reinterpret_cast<PyTypeObject*>(type.ptr());  // kept alive by tf_
}

}  // namespace

Plan::Plan(py::tuple time_step_tree, py::tuple state_tree, py::tuple output_tree, int num_args,
           py::object runtime)
    : layout_(time_step_tree, state_tree, output_tree, num_args),
      validator_(EagerTensorType(runtime)),
      lite_(layout_, validator_) {
  if (!runtime.is_none())
    tf_ = std::make_unique<TfFeed>(layout_, validator_, runtime.cast<py::dict>());
}

py::object Plan::PackRow(py::list outputs, npy_intp row) const {
  return policy_runtime::PackRow(layout_, outputs, row);
}

const TfFeed& Plan::Tf(const char* entry) const {
  if (!tf_)
    throw py::value_error(std::string(entry) +
                          ": this plan was built without a TF runtime (buffer engines only)");
  return *tf_;
}

}  // namespace policy_runtime
