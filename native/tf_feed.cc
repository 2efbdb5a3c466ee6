#include "native/tf_feed.h"

#include <algorithm>
#include <cstring>

#include "native/pack.h"
#include "native/rows.h"

namespace policy_runtime {
namespace {

// Copies `arr` (already validated against the plan) into a C-ordered buffer.
void Fill(PyArrayObject* arr, void* buffer, PyArray_Descr* want) {
  if (PyArray_IS_C_CONTIGUOUS(arr) && PyArray_ISNOTSWAPPED(arr)) {
    std::memcpy(buffer, PyArray_DATA(arr), static_cast<size_t>(PyArray_NBYTES(arr)));
    return;
  }
  Py_INCREF(want);
  py::object dst = Steal(PyArray_NewFromDescr(&PyArray_Type, want, PyArray_NDIM(arr),
                                              PyArray_DIMS(arr), nullptr, buffer,
                                              NPY_ARRAY_CARRAY, nullptr));
  if (PyArray_CopyInto(reinterpret_cast<PyArrayObject*>(dst.ptr()), arr) < 0)
    throw py::error_already_set();
}

}  // namespace

// Makes each validated leaf the tensor argument of its slot.
class TensorSink : public LeafSink {
 public:
  TensorSink(const TfFeed& feed, bool use_staging) : feed_(feed), use_staging_(use_staging) {}
  // Returns the call's staging tensors to the pool however the call ends.
  ~TensorSink() override { feed_.pool_.Return(std::move(staging_)); }

  void Leaf(const LeafSpec& spec, py::object held, CallState* state) const override {
    auto* arr = reinterpret_cast<PyArrayObject*>(held.ptr());
    PyArray_Descr* want = spec.Descr();
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
      tensor = feed_.EagerTensor(spec, arr, shape, out_ndim);
    } else if (use_staging_ && spec.fixed_inner && !(zero_copy && nbytes >= kZeroCopyMinBytes)) {
      if (!staging_) staging_ = feed_.pool_.Take(static_cast<npy_intp>(shape[0]), feed_.layout_.num_args);
      StagedLeaf& staged = staging_->leaves[spec.slot];
      if (!staged.tensor) {
        LeafPtr leaf = NewExportedLeaf();
        leaf->buffer = AlignedAlloc(nbytes);
        staged.data = leaf->buffer;
        staged.tensor = feed_.DlpackTensor(spec, std::move(leaf), staged.data, shape, out_ndim);
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
      tensor = feed_.DlpackTensor(spec, std::move(leaf), data, shape, out_ndim);
    }
    PyList_SET_ITEM(state->args, spec.slot, tensor.release().ptr());
  }

 private:
  const TfFeed& feed_;
  bool use_staging_;
  mutable std::unique_ptr<Staging> staging_;  // leased from the feed's pool
};

TfFeed::TfFeed(const Layout& layout, const Validator& validator, py::dict runtime)
    : layout_(layout), validator_(validator) {
  from_dlpack_ = runtime["from_dlpack"];
  eager_tensor_ = runtime["eager_tensor"];
  context_handle_ = runtime["context_handle"];
  device_ = runtime["device"];
  execute_ = runtime["execute"];
  attrs_ = runtime["attrs"];
  num_outputs_ = runtime["num_outputs"];
  numpy_method_ = py::str("_numpy_internal");
}

py::list TfFeed::Flatten(py::handle time_step, py::handle policy_state, bool staging) const {
  CallState state;
  TensorSink sink(*this, staging);
  return validator_.Walk(layout_, time_step, policy_state, 0, &state, sink);
}

py::object TfFeed::Call(py::handle time_step, py::handle policy_state, py::handle function_name,
                        py::tuple captures) const {
  CallState state;
  TensorSink sink(*this, true);
  py::list args = validator_.Walk(layout_, time_step, policy_state, captures.size(), &state, sink);
  py::object outputs = Execute(args, function_name, captures);
  return PackTree(layout_.output, [&](const OutNode& leaf) {
    return ToArray(PySequence_Fast_GET_ITEM(outputs.ptr(), leaf.index), leaf.unbatch);
  });
}

py::list TfFeed::CallRows(py::list rows, npy_intp pad_to, py::handle function_name,
                          py::tuple captures) const {
  std::vector<PyObject*> row_lists = RowLists(layout_, rows);
  npy_intp batch = std::max(static_cast<npy_intp>(row_lists.size()), pad_to);
  py::list args = Steal(PyList_New(layout_.num_args + captures.size()));
  for (int slot = 0; slot < layout_.num_args; ++slot) {
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

// Appends the captures to `args` and runs the function; its outputs as a fast sequence.
py::object TfFeed::Execute(const py::list& args, py::handle function_name,
                           const py::tuple& captures) const {
  for (size_t i = 0; i < captures.size(); ++i) {
    PyObject* c = captures[i].ptr();
    Py_INCREF(c);
    PyList_SET_ITEM(args.ptr(), layout_.num_args + i, c);
  }
  py::object outputs = Steal(PyObject_CallFunctionObjArgs(
      execute_.ptr(), context_handle_.ptr(), device_.ptr(), function_name.ptr(),
      args.ptr(), attrs_.ptr(), num_outputs_.ptr(), nullptr));
  if (!PyList_Check(outputs.ptr()) && !PyTuple_Check(outputs.ptr()))
    throw py::type_error("function outputs must be a list or tuple");
  py::object seq = Steal(PySequence_Fast(outputs.ptr(), "outputs"));
  if (PySequence_Fast_GET_SIZE(seq.ptr()) < layout_.min_outputs)
    throw py::value_error("output index out of range");
  return seq;
}

// Caller rows of one argument slot, stacked into a batched input tensor.
py::object TfFeed::GatherSlot(int slot, const std::vector<PyObject*>& rows, npy_intp batch) const {
  const LeafSpec& spec = layout_.Slot(slot);
  std::vector<npy_intp> dims = RowDims(layout_, slot, rows, batch);
  int inner_ndim = static_cast<int>(dims.size()) - 1;
  PyArray_Descr* want = spec.Descr();
  Py_INCREF(want);
  py::object stacked;
  void* buffer = nullptr;
  LeafPtr leaf;
  if (spec.dlpack) {
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
  CopyRows(layout_, slot, rows, reinterpret_cast<PyArrayObject*>(stacked.ptr()), dims);
  if (!spec.dlpack) {
    return Steal(PyObject_CallFunctionObjArgs(eager_tensor_.ptr(), stacked.ptr(), device_.ptr(),
                                              spec.tf_dtype.ptr(), nullptr));
  }
  stacked = py::object();  // the view over the buffer goes before the buffer changes hands
  int64_t shape[NPY_MAXDIMS + 1];
  for (int i = 0; i <= inner_ndim; ++i) shape[i] = dims[i];
  return DlpackTensor(spec, std::move(leaf), buffer, shape, 1 + inner_ndim);
}

// An eager tensor over `data` (owned by `leaf`: a lent array or a buffer).
py::object TfFeed::DlpackTensor(const LeafSpec& spec, LeafPtr leaf, void* data,
                                const int64_t* shape, int ndim) const {
  py::object capsule = Capsule(std::move(leaf), data, spec.dl_type, shape, ndim);
  return Steal(PyObject_CallFunctionObjArgs(from_dlpack_.ptr(), capsule.ptr(),
                                            context_handle_.ptr(), nullptr));
}

// TF's own conversion, for dtypes DLPack does not carry (bool, strings).
py::object TfFeed::EagerTensor(const LeafSpec& spec, PyArrayObject* arr, const int64_t* shape,
                               int ndim) const {
  std::vector<npy_intp> dims(shape, shape + ndim);
  PyArray_Dims newshape{dims.data(), ndim};
  PyArray_Descr* want = spec.Descr();
  Py_INCREF(want);
  py::object contiguous = Steal(PyArray_FromAny(reinterpret_cast<PyObject*>(arr), want, 0, 0,
                                                NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, nullptr));
  py::object shaped = Steal(PyArray_Newshape(
      reinterpret_cast<PyArrayObject*>(contiguous.ptr()), &newshape, NPY_CORDER));
  return Steal(PyObject_CallFunctionObjArgs(eager_tensor_.ptr(), shaped.ptr(), device_.ptr(),
                                            spec.tf_dtype.ptr(), nullptr));
}

// An owned copy of the tensor's values (its buffer may be a variable's, a
// constant's or an input's).
py::object TfFeed::ToArray(PyObject* tensor, bool unbatch) const {
  py::object value = Steal(PyObject_CallMethodNoArgs(tensor, numpy_method_.ptr()));
  if (!PyArray_Check(value.ptr())) value = Steal(PyArray_FromScalar(value.ptr(), nullptr));
  return OwnedCopy(value, unbatch);
}

}  // namespace policy_runtime
