// The extension module `native._marshal` (imported only by native/marshal.py):
// the Plan (native/plan.h) and the CopySwitch (native/copy_switch.h).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#define POLICY_RUNTIME_IMPORT_NUMPY
#include "native/numpy.h"

#include "native/copy_switch.h"
#include "native/dlpack.h"
#include "native/litert_engine.h"
#include "native/plan.h"
#include "native/tf_feed.h"

namespace py = pybind11;
using policy_runtime::LiteRtEngine;
using policy_runtime::Plan;

PYBIND11_MODULE(_marshal, m) {
  if (_import_array() < 0) throw py::error_already_set();
  m.doc() = "Native marshaling between numpy nests and a saved policy's flat tensors.";
  m.attr("ALIGNMENT") = policy_runtime::kAlignment;
  m.attr("NO_CALLER_BATCH") = policy_runtime::kNoCallerBatch;
  m.attr("ANY_BATCH") = policy_runtime::kAnyBatch;
  m.attr("ZERO_COPY_MIN_BYTES") = policy_runtime::kZeroCopyMinBytes;
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
  py::class_<LiteRtEngine>(m, "LiteRtEngine")
      .def(py::init<const std::string&, py::bytes, const std::string&,
                    const std::vector<std::string>&, const std::vector<std::string>&,
                    const std::vector<std::vector<npy_intp>>&, npy_intp, int, npy_intp, int>(),
           py::arg("library"), py::arg("flatbuffer"), py::arg("signature"),
           py::arg("input_names"), py::arg("output_names"), py::arg("output_dims"),
           py::arg("first_batch"), py::arg("max_batch_sizes"),
           py::arg("release_gil_from_batch"), py::arg("num_threads") = 1)
      .def("discard", &LiteRtEngine::Discard, py::arg("batch"))
      .def("batch_sizes", &LiteRtEngine::BatchSizes)
      .def_property_readonly("release_gil_from_batch", &LiteRtEngine::release_gil_from_batch)
      .def_property_readonly(
          "handle",
          [](py::object self) {
            // The capsule keeps the engine alive for as long as it lives.
            PyObject* capsule = PyCapsule_New(self.cast<LiteRtEngine*>(),
                                              policy_runtime::kLiteRtEngineCapsule, [](PyObject* c) {
                                                Py_XDECREF(static_cast<PyObject*>(
                                                    PyCapsule_GetContext(c)));
                                              });
            if (capsule == nullptr) throw py::error_already_set();
            if (PyCapsule_SetContext(capsule, self.inc_ref().ptr()) != 0) {
              self.dec_ref();
              Py_DECREF(capsule);
              throw py::error_already_set();
            }
            return py::reinterpret_steal<py::object>(capsule);
          },
          "A capsule standing for this engine in call_buffers' `lease` argument.");
  policy_runtime::RegisterCopySwitch(m);
  m.def("live_exported_leaves", &policy_runtime::LiveExportedLeaves,
        "Input buffers currently lent to TensorFlow (0 when no call is running).");
}
