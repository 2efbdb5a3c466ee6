#include "native/lite_feed.h"

#include <algorithm>
#include <cstring>

#include "native/litert_engine.h"
#include "native/pack.h"
#include "native/rows.h"

namespace policy_runtime {
namespace {

// The parts of a lease: (inputs, invoke, outputs, ...), or a native runner's.
struct LeaseParts {
  PyObject* inputs;
  PyObject* invoke;  // null for a runner
  PyObject* outputs;
  LiteRtEngine::Runner* runner;

  void Invoke() const {
    if (runner != nullptr)
      runner->Run();
    else
      Steal(PyObject_CallNoArgs(invoke));
  }

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

// lease(batch), run(parts), release(lease) however run ends; run's error wins
// over one from release(). A LiteRtEngine's handle as `lease` lends a runner instead.
template <typename Run>
py::object WithLease(const Layout& layout, py::handle lease, py::handle release, npy_intp batch,
                     Run run) {
  if (PyCapsule_CheckExact(lease.ptr())) {
    auto* engine =
        static_cast<LiteRtEngine*>(PyCapsule_GetPointer(lease.ptr(), kLiteRtEngineCapsule));
    if (engine == nullptr) throw py::error_already_set();
    LiteRtEngine::Lease runner = engine->Acquire(batch);
    return run(LeaseParts{runner->inputs(), nullptr, runner->outputs(), runner.get()});
  }
  py::object leased = Steal(PyObject_CallFunction(lease.ptr(), "n", batch));
  py::object result;
  try {
    PyObject* t = leased.ptr();
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 3)
      throw py::type_error("call_buffers: lease(batch) must return (inputs, invoke, outputs)");
    // The tuple holds references to its parts for as long as `leased` lives.
    LeaseParts parts{PyTuple_GET_ITEM(t, 0), PyTuple_GET_ITEM(t, 1), PyTuple_GET_ITEM(t, 2),
                     nullptr};
    if (!PyList_Check(parts.inputs) || PyList_GET_SIZE(parts.inputs) != layout.num_args ||
        !PyList_Check(parts.outputs) || PyList_GET_SIZE(parts.outputs) < layout.min_outputs)
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

// Copies one validated leaf (the slot's dtype, in either byte order) into its
// engine input buffer.
void FillBuffer(PyArrayObject* dst, PyArrayObject* src, int slot) {
  if (!PyArray_ISCARRAY(dst) ||
      !PyArray_CanCastTypeTo(PyArray_DESCR(src), PyArray_DESCR(dst), NPY_EQUIV_CASTING) ||
      PyArray_SIZE(dst) != PyArray_SIZE(src)) {
    throw py::value_error("call_buffers: input buffer " + std::to_string(slot) + " is " +
                          Describe(dst) + ", the validated leaf is " + Describe(src));
  }
  if (PyArray_IS_C_CONTIGUOUS(src) && PyArray_ISNOTSWAPPED(src) &&
      PyArray_EquivTypes(PyArray_DESCR(dst), PyArray_DESCR(src)) &&
      !PyDataType_REFCHK(PyArray_DESCR(src))) {
    std::memcpy(PyArray_DATA(dst), PyArray_DATA(src), static_cast<size_t>(PyArray_NBYTES(src)));
    return;
  }
  PyArray_Dims shape{PyArray_DIMS(dst), PyArray_NDIM(dst)};
  py::object reshaped = Steal(PyArray_Newshape(src, &shape, NPY_ANYORDER));
  if (PyArray_CopyInto(dst, reinterpret_cast<PyArrayObject*>(reshaped.ptr())) < 0)
    throw py::error_already_set();
}

}  // namespace

LiteFeed::LiteFeed(const Layout& layout, const Validator& validator)
    : layout_(layout), validator_(validator) {
  for (const LeafSpec* spec : layout.slot_specs)
    if (spec->batch >= 0) fixed_batch_ = spec->batch;
}

py::object LiteFeed::Call(py::handle time_step, py::handle policy_state, py::handle lease,
                          py::handle release) const {
  CallState state;
  py::list arrays = validator_.Arrays(layout_, time_step, policy_state, &state);
  // Caller-batched leaves set the batch; else it is the plan's fixed one, or 1.
  npy_intp batch = state.batch >= 0 ? state.batch : fixed_batch_ >= 0 ? fixed_batch_ : 1;
  return WithLease(layout_, lease, release, batch, [&](const LeaseParts& parts) {
    for (int slot = 0; slot < layout_.num_args; ++slot) {
      FillBuffer(parts.Input(slot),
                 reinterpret_cast<PyArrayObject*>(PyList_GET_ITEM(arrays.ptr(), slot)), slot);
    }
    parts.Invoke();
    return PackTree(layout_.output, [&](const OutNode& leaf) {
      return OwnedCopy(parts.Output(leaf.index), leaf.unbatch);
    });
  });
}

py::list LiteFeed::CallRows(py::list rows, npy_intp pad_to, py::handle lease,
                            py::handle release) const {
  std::vector<PyObject*> row_lists = RowLists(layout_, rows);
  npy_intp batch = std::max(static_cast<npy_intp>(row_lists.size()), pad_to);
  py::object result = WithLease(layout_, lease, release, batch, [&](const LeaseParts& parts) {
    for (int slot = 0; slot < layout_.num_args; ++slot) {
      PyArrayObject* dst = parts.Input(slot);
      std::vector<npy_intp> dims = RowDims(layout_, slot, row_lists, batch);
      npy_intp want = 1;
      for (npy_intp d : dims) want *= d;
      if (!PyArray_ISCARRAY(dst) || PyArray_SIZE(dst) != want ||
          !PyArray_EquivTypes(PyArray_DESCR(dst), layout_.Slot(slot).Descr())) {
        throw py::value_error("call_rows_buffers: input buffer " + std::to_string(slot) +
                              " is " + Describe(dst) + ", the rows need " +
                              std::to_string(want) + " elements");
      }
      // Rows past the callers' are zeros, not a previous call's values.
      npy_intp row_bytes = PyArray_NBYTES(dst) / batch;
      npy_intp callers = static_cast<npy_intp>(row_lists.size());
      std::memset(static_cast<char*>(PyArray_DATA(dst)) + callers * row_bytes, 0,
                  static_cast<size_t>((batch - callers) * row_bytes));
      CopyRows(layout_, slot, row_lists, dst, dims);
    }
    parts.Invoke();
    if (PyList_GET_SIZE(parts.outputs) < layout_.min_outputs)
      throw py::value_error("call_buffers: the lease's output list changed size");
    py::list outputs(PyList_GET_SIZE(parts.outputs));
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts.outputs); ++i)
      outputs[i] = OwnedCopy(parts.Output(i), false);
    return py::object(std::move(outputs));
  });
  return py::reinterpret_steal<py::list>(result.release());
}

}  // namespace policy_runtime
