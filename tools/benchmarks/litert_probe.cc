// Probes LiteRT's public C API (the CompiledModel runtime in ai-edge-litert's
// libLiteRt.so) on a policy's converted `action`: loads the library at run
// time (the native engine's declarations, native/litert_api.h, plus two
// probe-only functions resolved here), compiles the model for the
// CPU, resizes its batch, binds host-memory buffers sized as the compiled
// model reports, and times a bare LiteRtRunCompiledModel: passing the input
// buffers on every run, and passing nulls after a first run bound them (what
// native/litert_engine.cc does).
//
//   litert_probe LIBLITERT_SO MODEL.tflite BATCH [CALLS]
//
// Prints one line of `key=value` pairs: status=ok with us_per_run and
// us_per_run_bound, or
// status=<step>_failed; reported_batch is the batch of the outputs as the
// compiled model reports them after the resize. Run by tools/benchmarks/litert_probe.py.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <stdexcept>
#include <vector>

#include "native/litert_api.h"

namespace {

using policy_runtime::LiteRtApi;

constexpr size_t kAlignment = 64;

// The two functions the probe needs beyond the engine's API.
struct ProbeApi {
  LiteRtStatus (*CompiledModelResizeInputTensor)(LiteRtCompiledModel, LiteRtParamIndex,
                                                 LiteRtParamIndex, const int*, size_t);
  LiteRtStatus (*GetCompiledModelOutputTensorLayouts)(LiteRtCompiledModel, LiteRtParamIndex,
                                                      size_t, LiteRtLayout*, bool);
};

// The engine's API and the probe's, from the library at `path`; prints why not.
bool LoadApi(const char* path, const LiteRtApi** api, ProbeApi* probe) {
  try {
    *api = &policy_runtime::LoadLiteRtApi(path);
  } catch (const std::runtime_error& e) {
    std::printf("status=load_failed error=\"%s\"\n", e.what());
    return false;
  }
  void* library = dlopen(path, RTLD_NOW | RTLD_NOLOAD);  // loaded above
  probe->CompiledModelResizeInputTensor = reinterpret_cast<decltype(
      probe->CompiledModelResizeInputTensor)>(dlsym(library, "LiteRtCompiledModelResizeInputTensor"));
  probe->GetCompiledModelOutputTensorLayouts = reinterpret_cast<decltype(
      probe->GetCompiledModelOutputTensorLayouts)>(
      dlsym(library, "LiteRtGetCompiledModelOutputTensorLayouts"));
  if (probe->CompiledModelResizeInputTensor == nullptr ||
      probe->GetCompiledModelOutputTensorLayouts == nullptr) {
    std::printf("status=missing_symbol\n");
    return false;
  }
  return true;
}

size_t ElementBytes(int element_type) {
  switch (element_type) {
    case 4: case 11: case 13: return 8;         // int64, float64, uint64
    case 3: case 6: case 9: return 1;           // uint8, bool, int8
    case 7: case 10: case 17: case 19: return 2;  // int16, float16, uint16, bfloat16
    default: return 4;                          // float32, int32, uint32
  }
}

size_t Bytes(const LiteRtRankedTensorType& type) {
  size_t n = ElementBytes(type.element_type);
  for (unsigned i = 0; i < type.layout.rank; ++i)
    n *= static_cast<size_t>(std::max(type.layout.dimensions[i], 1));
  return n;
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

#define STEP(name, call)                                  \
  do {                                                    \
    if ((call) != 0) {                                    \
      std::printf("status=%s_failed\n", name);            \
      return 1;                                           \
    }                                                     \
  } while (0)

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s LIBLITERT_SO MODEL.tflite BATCH [CALLS]\n", argv[0]);
    return 2;
  }
  const int batch = std::atoi(argv[3]);
  const int calls = argc > 4 ? std::atoi(argv[4]) : 20000;
  const LiteRtApi* loaded = nullptr;
  ProbeApi probe;
  if (!LoadApi(argv[1], &loaded, &probe)) return 1;
  const LiteRtApi& api = *loaded;
  std::ifstream file(argv[2], std::ios::binary);
  std::vector<char> flatbuffer((std::istreambuf_iterator<char>(file)), {});

  LiteRtEnvironment environment;
  STEP("environment", policy_runtime::CreateQuietEnvironment(api, &environment));
  LiteRtModel model;
  STEP("model", api.CreateModelFromBuffer(environment, flatbuffer.data(), flatbuffer.size(),
                                          &model));
  LiteRtOptions compile_options;
  STEP("options", api.CreateOptions(&compile_options));
  STEP("options", api.SetOptionsHardwareAccelerators(compile_options,
                                                      policy_runtime::kLiteRtHwAcceleratorCpu));
  LiteRtCompiledModel compiled;
  STEP("compile", api.CreateCompiledModel(environment, model, compile_options, &compiled));

  LiteRtParamIndex signatures, index = 0;
  LiteRtSignature signature = nullptr;
  STEP("signature", api.GetNumModelSignatures(model, &signatures));
  for (LiteRtParamIndex i = 0; i < signatures; ++i) {
    LiteRtSignature candidate;
    const char* key;
    STEP("signature", api.GetModelSignature(model, i, &candidate));
    STEP("signature", api.GetSignatureKey(candidate, &key));
    if (std::string(key) == "action") signature = candidate, index = i;
  }
  if (signature == nullptr) {
    std::printf("status=no_action_signature\n");
    return 1;
  }
  LiteRtParamIndex num_inputs, num_outputs;
  STEP("signature", api.GetNumSignatureInputs(signature, &num_inputs));
  STEP("signature", api.GetNumSignatureOutputs(signature, &num_outputs));

  std::vector<std::unique_ptr<void, FreeDeleter>> memory;
  auto host_buffer = [&](const LiteRtRankedTensorType& type, LiteRtTensorBuffer* out) {
    size_t size = (Bytes(type) + kAlignment - 1) / kAlignment * kAlignment;
    void* data = std::aligned_alloc(kAlignment, size);
    std::memset(data, 0, size);
    memory.emplace_back(data);
    return api.CreateTensorBufferFromHostMemory(&type, data, size, nullptr, out);
  };
  std::vector<LiteRtTensorBuffer> inputs(num_inputs), outputs(num_outputs);
  for (LiteRtParamIndex i = 0; i < num_inputs; ++i) {
    LiteRtTensor tensor;
    LiteRtRankedTensorType type;
    STEP("input_type", api.GetSignatureInputTensorByIndex(signature, i, &tensor));
    STEP("input_type", api.GetRankedTensorType(tensor, &type));
    if (type.layout.rank > 0 && type.layout.dimensions[0] < 0) {
      type.layout.dimensions[0] = batch;
      std::vector<int> dims(type.layout.dimensions, type.layout.dimensions + type.layout.rank);
      STEP("resize", probe.CompiledModelResizeInputTensor(compiled, index, i, dims.data(),
                                                         dims.size()));
    }
    STEP("input_buffer", host_buffer(type, &inputs[i]));
  }
  std::vector<LiteRtLayout> layouts(num_outputs);
  STEP("output_layouts", probe.GetCompiledModelOutputTensorLayouts(compiled, index, num_outputs,
                                                                 layouts.data(), true));
  int reported_batch = batch;  // an output's batch that differs, if any
  for (LiteRtParamIndex i = 0; i < num_outputs; ++i) {
    LiteRtTensor tensor;
    LiteRtRankedTensorType type;
    STEP("output_type", api.GetSignatureOutputTensorByIndex(signature, i, &tensor));
    STEP("output_type", api.GetRankedTensorType(tensor, &type));
    type.layout = layouts[i];
    if (type.layout.rank > 0 && type.layout.dimensions[0] != batch)
      reported_batch = type.layout.dimensions[0];
    STEP("output_buffer", host_buffer(type, &outputs[i]));
  }
  if (reported_batch != batch) {
    // Buffers of the reported size would be too small: the run would write past them.
    std::printf("status=outputs_not_resized reported_batch=%d batch=%d\n", reported_batch, batch);
    return 1;
  }
  STEP("run", api.RunCompiledModel(compiled, index, num_inputs, inputs.data(), num_outputs,
                                   outputs.data()));
  auto median_us = [&](LiteRtTensorBuffer* run_inputs) {
    std::vector<double> rounds;
    for (int round = 0; round < 7; ++round) {
      auto start = std::chrono::steady_clock::now();
      for (int k = 0; k < calls; ++k)
        api.RunCompiledModel(compiled, index, num_inputs, run_inputs, num_outputs,
                             outputs.data());
      rounds.push_back(std::chrono::duration<double, std::micro>(
                           std::chrono::steady_clock::now() - start).count() / calls);
    }
    std::sort(rounds.begin(), rounds.end());
    return rounds[3];
  };
  double every_run = median_us(inputs.data());
  std::vector<LiteRtTensorBuffer> bound(num_inputs, nullptr);  // keep the last run's bindings
  double after_binding = median_us(bound.data());
  std::printf("status=ok reported_batch=%d us_per_run=%.3f us_per_run_bound=%.3f\n",
              reported_batch, every_run, after_binding);
  return 0;
}
