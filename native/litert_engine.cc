#include "native/litert_engine.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace policy_runtime {
namespace {

// LiteRtElementType (TfLiteType's values) to numpy's type number; -1: none.
int NpyType(int element_type) {
  switch (element_type) {
    case 1: return NPY_FLOAT32;
    case 2: return NPY_INT32;
    case 3: return NPY_UINT8;
    case 4: return NPY_INT64;
    case 6: return NPY_BOOL;
    case 7: return NPY_INT16;
    case 8: return NPY_COMPLEX64;
    case 9: return NPY_INT8;
    case 10: return NPY_FLOAT16;
    case 11: return NPY_FLOAT64;
    case 12: return NPY_COMPLEX128;
    case 13: return NPY_UINT64;
    case 16: return NPY_UINT32;
    case 17: return NPY_UINT16;
    default: return -1;
  }
}

[[noreturn]] void Refuse(const std::string& why) { throw py::value_error(why); }

void Check(LiteRtStatus status, const std::string& step) {
  if (status != 0) Refuse(step + " failed (LiteRT status " + std::to_string(status) + ")");
}

LiteRtEngine::Tensor ReadTensor(const LiteRtApi& api, LiteRtTensor tensor, LiteRtParamIndex index,
                              const std::string& name) {
  LiteRtRankedTensorType type;
  Check(api.GetRankedTensorType(tensor, &type), "reading the type of tensor " + name);
  LiteRtEngine::Tensor out{index, type.element_type, NpyType(type.element_type), {}};
  if (out.npy_type < 0)
    Refuse("tensor " + name + " has element type " + std::to_string(type.element_type) +
           ", which has no numpy equivalent here");
  for (unsigned i = 0; i < type.layout.rank; ++i) out.dims.push_back(type.layout.dimensions[i]);
  return out;
}

npy_intp Elements(const std::vector<npy_intp>& dims) {
  npy_intp n = 1;
  for (npy_intp d : dims) n *= d;
  return n;
}

void FreeCapsule(PyObject* capsule) { std::free(PyCapsule_GetPointer(capsule, nullptr)); }

// A zeroed array of `dims` over 64-byte aligned memory that the array owns.
py::object AlignedArray(int npy_type, const std::vector<npy_intp>& dims) {
  PyArray_Descr* descr = PyArray_DescrFromType(npy_type);
  size_t bytes = static_cast<size_t>(Elements(dims)) * static_cast<size_t>(PyDataType_ELSIZE(descr));
  size_t padded = std::max<size_t>((bytes + kAlignment - 1) / kAlignment * kAlignment, kAlignment);
  void* data = std::aligned_alloc(kAlignment, padded);
  PyObject* capsule = data != nullptr ? PyCapsule_New(data, nullptr, FreeCapsule) : nullptr;
  if (capsule == nullptr) {
    std::free(data);
    Py_DECREF(descr);
    if (!PyErr_Occurred()) throw std::bad_alloc();
    throw py::error_already_set();
  }
  py::object owner = Steal(capsule);
  std::memset(data, 0, padded);
  std::vector<npy_intp> shape(dims);
  py::object array = Steal(PyArray_NewFromDescr(
      &PyArray_Type, descr, static_cast<int>(shape.size()), shape.data(), nullptr, data,
      NPY_ARRAY_CARRAY, nullptr));
  if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(array.ptr()), owner.release().ptr()) < 0)
    throw py::error_already_set();
  return array;
}

}  // namespace

LiteRtEngine::Runner::Runner(const LiteRtEngine& engine, npy_intp batch)
    : engine_(engine), batch_(batch) {
  const LiteRtApi& api = engine.api_;
  try {
    // A batch of 0 has nothing to run: its outputs are empty, as TF's are.
    if (batch > 0)
      Check(api.CreateCompiledModel(engine.environment_, engine.model_, engine.options_,
                                    &compiled_),
            "compiling the model for the CPU");
    inputs_ = Buffers(engine.inputs_, &input_buffers_);
    unbound_inputs_.assign(input_buffers_.size(), nullptr);
    outputs_ = Buffers(engine.outputs_, &output_buffers_);
  } catch (...) {
    Free();
    throw;
  }
}

LiteRtEngine::Runner::~Runner() { Free(); }

void LiteRtEngine::Runner::Free() {
  const LiteRtApi& api = engine_.api_;
  for (LiteRtTensorBuffer b : input_buffers_)
    if (b != nullptr) api.DestroyTensorBuffer(b);
  for (LiteRtTensorBuffer b : output_buffers_)
    if (b != nullptr) api.DestroyTensorBuffer(b);
  if (compiled_ != nullptr) api.DestroyCompiledModel(compiled_);
  input_buffers_.clear();
  output_buffers_.clear();
  compiled_ = nullptr;
}

py::list LiteRtEngine::Runner::Buffers(const std::vector<Tensor>& tensors,
                                       std::vector<LiteRtTensorBuffer>* out) {
  out->assign(tensors.size(), nullptr);
  py::list arrays(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    std::vector<npy_intp> dims(t.dims);
    if (!dims.empty() && dims[0] < 0) dims[0] = batch_;
    if (!dims.empty() && dims[0] != batch_)
      Refuse("the model runs at batch " + std::to_string(dims[0]) + " only, not " +
             std::to_string(batch_));
    py::object array = AlignedArray(t.npy_type, dims);
    auto* a = reinterpret_cast<PyArrayObject*>(array.ptr());
    LiteRtRankedTensorType type{};
    type.element_type = t.element_type;
    type.layout.rank = static_cast<unsigned>(dims.size());
    for (size_t d = 0; d < dims.size(); ++d) type.layout.dimensions[d] = static_cast<int32_t>(dims[d]);
    arrays[i] = array;
    if (batch_ == 0) continue;
    // Exactly the tensor's bytes: a tensor that needs more fails the run.
    Check(engine_.api_.CreateTensorBufferFromHostMemory(
              &type, PyArray_DATA(a), static_cast<size_t>(PyArray_NBYTES(a)), nullptr,
              &(*out)[t.index]),
          "creating a host-memory tensor buffer");
  }
  return arrays;
}

void LiteRtEngine::Runner::Run() {
  if (batch_ == 0) return;
  const LiteRtApi& api = engine_.api_;
  // After a first run binds the input buffers to their tensors, null input
  // buffers keep those bindings, which spares their registration on every run.
  LiteRtTensorBuffer* inputs = registered_ ? unbound_inputs_.data() : input_buffers_.data();
  LiteRtStatus status;
  if (batch_ >= engine_.release_gil_from_batch_) {
    py::gil_scoped_release nogil;
    status = api.RunCompiledModel(compiled_, engine_.signature_, input_buffers_.size(), inputs,
                                  output_buffers_.size(), output_buffers_.data());
  } else {
    status = api.RunCompiledModel(compiled_, engine_.signature_, input_buffers_.size(), inputs,
                                  output_buffers_.size(), output_buffers_.data());
  }
  if (status != 0)
    Raise(PyExc_RuntimeError, "the LiteRT model failed to run at batch " +
                                  std::to_string(batch_) + " (LiteRT status " +
                                  std::to_string(status) + ")");
  registered_ = true;
}

LiteRtEngine::LiteRtEngine(const std::string& library, py::bytes flatbuffer,
                           const std::string& signature,
                           const std::vector<std::string>& input_names,
                           const std::vector<std::string>& output_names,
                           const std::vector<std::vector<npy_intp>>& output_dims,
                           npy_intp first_batch, int max_batch_sizes,
                           npy_intp release_gil_from_batch, int num_threads)
    : api_([&]() -> const LiteRtApi& {
        try {
          return LoadLiteRtApi(library);
        } catch (const std::runtime_error& e) {
          Refuse(e.what());
        }
      }()),
      flatbuffer_(flatbuffer),
      max_batch_sizes_(static_cast<size_t>(std::max(max_batch_sizes, 1))),
      release_gil_from_batch_(release_gil_from_batch) {
  // The members LiteRT owns are freed by the destructor, which a throwing
  // constructor does not run.
  try {
    if (output_dims.size() != output_names.size())
      Refuse("one output shape per output name is needed");
    Check(CreateQuietEnvironment(api_, &environment_), "creating a LiteRT environment");
    Check(api_.CreateModelFromBuffer(environment_, flatbuffer_.data(), flatbuffer_.size(), &model_),
          "reading the model");
    Check(api_.CreateOptions(&options_), "creating compilation options");
    Check(api_.SetOptionsHardwareAccelerators(options_, kLiteRtHwAcceleratorCpu),
          "selecting the CPU");
    if (num_threads < 1) Refuse("num_threads must be at least 1");
    if (num_threads > 1) Check(AddCpuThreads(api_, options_, num_threads), "setting the CPU threads");

    LiteRtParamIndex count = 0;
    LiteRtSignature found = nullptr;
    Check(api_.GetNumModelSignatures(model_, &count), "reading the signatures");
    for (LiteRtParamIndex i = 0; i < count && found == nullptr; ++i) {
      LiteRtSignature candidate;
      const char* key;
      Check(api_.GetModelSignature(model_, i, &candidate), "reading the signatures");
      Check(api_.GetSignatureKey(candidate, &key), "reading the signatures");
      if (key != nullptr && signature == key) found = candidate, signature_ = i;
    }
    if (found == nullptr) Refuse("the model has no " + signature + " signature");

    auto by_name = [&](bool input, const std::vector<std::string>& names) {
      LiteRtParamIndex n = 0;
      Check(input ? api_.GetNumSignatureInputs(found, &n) : api_.GetNumSignatureOutputs(found, &n),
            "reading the signature");
      if (n != names.size())
        Refuse("the signature has " + std::to_string(n) + (input ? " inputs" : " outputs") +
               ", not " + std::to_string(names.size()));
      std::vector<Tensor> tensors(names.size());
      std::vector<bool> seen(names.size(), false);
      for (LiteRtParamIndex i = 0; i < n; ++i) {
        const char* name;
        LiteRtTensor tensor;
        Check(input ? api_.GetSignatureInputName(found, i, &name)
                    : api_.GetSignatureOutputName(found, i, &name),
              "reading the signature");
        auto at = std::find(names.begin(), names.end(), std::string(name ? name : ""));
        if (at == names.end() || seen[at - names.begin()])
          Refuse(std::string("the signature's ") + (input ? "input " : "output ") +
                 (name ? name : "?") + " is not one of the policy's");
        seen[at - names.begin()] = true;
        Check(input ? api_.GetSignatureInputTensorByIndex(found, i, &tensor)
                    : api_.GetSignatureOutputTensorByIndex(found, i, &tensor),
              "reading the signature");
        tensors[at - names.begin()] = ReadTensor(api_, tensor, i, *at);
      }
      return tensors;
    };
    inputs_ = by_name(true, input_names);
    for (size_t i = 0; i < inputs_.size(); ++i) {
      const std::vector<npy_intp>& dims = inputs_[i].dims;
      for (size_t d = 1; d < dims.size(); ++d)
        if (dims[d] < 0) Refuse("input " + input_names[i] + " has a dynamic inner dimension");
    }
    // LiteRT's static output shapes can be stale (an LSTM's action reads
    // [-1, 1] for [-1, 2]); the caller's, measured on the interpreter, are not.
    outputs_ = by_name(false, output_names);
    for (size_t i = 0; i < outputs_.size(); ++i) {
      outputs_[i].dims = output_dims[i];
      for (size_t d = 1; d < output_dims[i].size(); ++d)
        if (output_dims[i][d] < 0) Refuse("output " + output_names[i] + " has a dynamic dimension");
    }
    Lease first = Acquire(first_batch);
    first->Run();
  } catch (...) {
    pool_.clear();
    if (options_ != nullptr) api_.DestroyOptions(options_);
    if (model_ != nullptr) api_.DestroyModel(model_);
    if (environment_ != nullptr) api_.DestroyEnvironment(environment_);
    throw;
  }
}

LiteRtEngine::~LiteRtEngine() {
  pool_.clear();  // runners before the model they were compiled from
  api_.DestroyOptions(options_);
  api_.DestroyModel(model_);
  api_.DestroyEnvironment(environment_);
}

LiteRtEngine::Lease LiteRtEngine::Acquire(npy_intp batch) {
  if (batch < 0) throw py::value_error("a batch of " + std::to_string(batch));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = pool_.find(batch);
    if (found != pool_.end() && !found->second.empty()) {
      std::unique_ptr<Runner> runner = std::move(found->second.back());
      found->second.pop_back();
      return Lease(this, std::move(runner));
    }
  }
  auto runner = std::make_unique<Runner>(*this, batch);
  std::vector<std::vector<std::unique_ptr<Runner>>> evicted;  // freed outside the lock
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (pool_.emplace(batch, std::vector<std::unique_ptr<Runner>>()).second) {
      order_.push_back(batch);
      while (order_.size() > max_batch_sizes_) {
        evicted.push_back(std::move(pool_[order_.front()]));
        pool_.erase(order_.front());
        order_.pop_front();
      }
    }
  }
  return Lease(this, std::move(runner));
}

void LiteRtEngine::Release(std::unique_ptr<Runner> runner) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = pool_.find(runner->batch());
  if (found != pool_.end()) found->second.push_back(std::move(runner));
  // else: its batch was discarded or evicted meanwhile; `runner` is freed on return.
}

void LiteRtEngine::Discard(npy_intp batch) {
  std::vector<std::unique_ptr<Runner>> dropped;
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = pool_.find(batch);
  if (found == pool_.end()) return;
  dropped = std::move(found->second);
  pool_.erase(found);
  order_.remove(batch);
}

std::vector<npy_intp> LiteRtEngine::BatchSizes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::vector<npy_intp>(order_.begin(), order_.end());
}

}  // namespace policy_runtime
