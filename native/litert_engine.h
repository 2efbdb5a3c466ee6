// A LiteRT model run through LiteRT's C API (native/litert_api.h), with no
// Python and no TensorFlow between a call's validation and its packing.
//
// The engine holds the model and, per batch size, a pool of runners: one
// compiled model each, with host-memory tensor buffers of exactly the bytes
// its tensors take at that batch (LiteRT refuses to run, rather than writes
// past them, when a tensor needs more). Numpy arrays over those buffers are
// what native/lite_feed.cc fills and copies out, as for a Python lease. A
// runner serves one call at a time; the last `max_batch_sizes` batch sizes
// keep their runners.
#ifndef POLICY_RUNTIME_NATIVE_LITERT_ENGINE_H_
#define POLICY_RUNTIME_NATIVE_LITERT_ENGINE_H_

#include <pybind11/pybind11.h>

#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "native/common.h"
#include "native/litert_api.h"

namespace policy_runtime {

// The name of the capsules that stand for an engine in call arguments
// (module.cc's `LiteRtEngine.handle`): a capsule is checked far faster than a
// pybind11 instance is recognised and cast.
constexpr const char* kLiteRtEngineCapsule = "policy_runtime.LiteRtEngine";

class LiteRtEngine {
 public:
  // One input or output of the signature: where it sits in the C API's
  // order, its element type, and its dims with -1 for the batch.
  struct Tensor {
    LiteRtParamIndex index;
    int element_type;
    int npy_type;
    std::vector<npy_intp> dims;
  };

  class Runner {
   public:
    Runner(const LiteRtEngine& engine, npy_intp batch);
    ~Runner();
    Runner(const Runner&) = delete;
    Runner& operator=(const Runner&) = delete;

    npy_intp batch() const { return batch_; }
    // Arrays over the input buffers by argument slot, over the outputs by output index.
    PyObject* inputs() const { return inputs_.ptr(); }
    PyObject* outputs() const { return outputs_.ptr(); }
    // Runs the compiled model; without the GIL at the engine's batch threshold.
    void Run();

   private:
    void Free();
    py::list Buffers(const std::vector<Tensor>& tensors, std::vector<LiteRtTensorBuffer>* out);

    const LiteRtEngine& engine_;
    npy_intp batch_;
    LiteRtCompiledModel compiled_ = nullptr;
    std::vector<LiteRtTensorBuffer> input_buffers_, output_buffers_;  // in the C API's order
    std::vector<LiteRtTensorBuffer> unbound_inputs_;  // nulls: keep the first run's bindings
    bool registered_ = false;
    py::list inputs_, outputs_;
  };

  // A runner for one call, returned to its pool (or freed) on destruction.
  class Lease {
   public:
    Lease(LiteRtEngine* engine, std::unique_ptr<Runner> runner)
        : engine_(engine), runner_(std::move(runner)) {}
    Lease(Lease&&) = default;
    ~Lease() {
      if (runner_) engine_->Release(std::move(runner_));
    }
    Runner* operator->() const { return runner_.get(); }
    Runner* get() const { return runner_.get(); }

   private:
    LiteRtEngine* engine_;
    std::unique_ptr<Runner> runner_;
  };

  // `input_names`: the signature's inputs by argument slot; `output_names`
  // and `output_dims` (-1 for the batch): its outputs by output index. Makes
  // and runs a runner for `first_batch`, so a model that does not run here
  // fails now. `num_threads`: XNNPACK's threads per run (1: the calling
  // thread only). Throws ValueError saying why the model cannot run natively.
  LiteRtEngine(const std::string& library, py::bytes flatbuffer, const std::string& signature,
               const std::vector<std::string>& input_names,
               const std::vector<std::string>& output_names,
               const std::vector<std::vector<npy_intp>>& output_dims, npy_intp first_batch,
               int max_batch_sizes, npy_intp release_gil_from_batch, int num_threads);
  ~LiteRtEngine();
  LiteRtEngine(const LiteRtEngine&) = delete;
  LiteRtEngine& operator=(const LiteRtEngine&) = delete;

  Lease Acquire(npy_intp batch);
  // Drops the runners prepared for `batch` (e.g. validation's large batches).
  void Discard(npy_intp batch);
  // Batch sizes with pooled runners, oldest first.
  std::vector<npy_intp> BatchSizes() const;
  npy_intp release_gil_from_batch() const { return release_gil_from_batch_; }

 private:
  void Release(std::unique_ptr<Runner> runner);

  const LiteRtApi& api_;
  std::string flatbuffer_;  // LiteRT reads the model from it for the model's life
  LiteRtEnvironment environment_ = nullptr;
  LiteRtModel model_ = nullptr;
  LiteRtOptions options_ = nullptr;
  LiteRtParamIndex signature_ = 0;
  std::vector<Tensor> inputs_;   // by argument slot
  std::vector<Tensor> outputs_;  // by output index
  size_t max_batch_sizes_;
  npy_intp release_gil_from_batch_;

  mutable std::mutex mutex_;  // guards pool_ and order_
  std::map<npy_intp, std::vector<std::unique_ptr<Runner>>> pool_;
  std::list<npy_intp> order_;  // pooled batch sizes, oldest first
};

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_LITERT_ENGINE_H_
