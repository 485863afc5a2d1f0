// onnxruntime programs (.onnx) through its C API. The headers are version 21's (Debian's libonnxruntime-dev
// 1.21, which make setup unpacks); the API is versioned (GetApi(ORT_API_VERSION) of a newer library gives
// version 21's table), so they serve the onnxruntime wheel's own library, which is opened with dlopen at the
// first ONNX model: a run of ExecuTorch programs maps none of it.
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

#include <onnxruntime_c_api.h>

#include "core.h"

namespace ce {
namespace {

const OrtApi* api = nullptr;
OrtEnv* env = nullptr;       // one per process, with a global intra-op pool when threads > 1
int env_threads = 0;         // that pool's size (1: none)
OrtMemoryInfo* cpu = nullptr;  // where the inputs the core hands onnxruntime live
std::mutex mu;

std::string first_line(const char* s) {
  std::string t = s ? s : "";
  auto nl = t.find('\n');
  if (nl != std::string::npos) t.resize(nl);
  return t.size() > 160 ? t.substr(0, 160) : t;
}

// The first line of a failed call's message; the status is released.
std::string message(OrtStatus* s) {
  std::string msg = first_line(api->GetErrorMessage(s));
  api->ReleaseStatus(s);
  return msg;
}

// Turns a failed call into the core's one-line failure; `kind` and `what` as the Python engine says them.
void check(OrtStatus* s, const char* kind, const std::string& what) {
  if (s != nullptr) fail_artifact(kind, what + " (" + message(s) + ")");
}

void internal(OrtStatus* s, const char* what) {
  if (s != nullptr) throw Failure{CE_ERR_INTERNAL, "internal", std::string("onnxruntime: ") + what + ": " + message(s)};
}

// The library, the env and its pool. The pool's size is the first model's --threads; a later model that asks
// for another count gets sessions with pools of their own (the Python engine does the same).
void init(int threads) {
  std::lock_guard<std::mutex> g(mu);
  if (api == nullptr) {
    const char* lib = std::getenv("COSMOE_EDGE_ONNXRUNTIME");
    if (lib == nullptr) lib = CE_ONNXRUNTIME_LIBRARY;
    void* h = ::dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr)
      fail_request("no_onnxruntime", std::string("cannot open onnxruntime's library ") + lib +
                                         " (pip install onnxruntime, or set COSMOE_EDGE_ONNXRUNTIME): " + ::dlerror());
    using GetApiBase = const OrtApiBase* (*)();
    auto get = reinterpret_cast<GetApiBase>(::dlsym(h, "OrtGetApiBase"));
    const OrtApi* found = get ? get()->GetApi(ORT_API_VERSION) : nullptr;
    if (found == nullptr)
      fail_request("no_onnxruntime", std::string(lib) + " does not offer onnxruntime's C API version " +
                                         std::to_string(ORT_API_VERSION));
    api = found;
  }
  if (env == nullptr) {
    OrtThreadingOptions* tp = nullptr;
    internal(api->CreateThreadingOptions(&tp), "threading options");
    internal(api->SetGlobalIntraOpNumThreads(tp, threads), "threads");
    internal(api->SetGlobalInterOpNumThreads(tp, 1), "threads");
    // a pool that spins after each call holds a core the next call's own thread needs (2 cores here)
    internal(api->SetGlobalSpinControl(tp, 0), "spin control");
    internal(api->CreateEnvWithGlobalThreadPools(ORT_LOGGING_LEVEL_ERROR, "cosmoe-edge", tp, &env), "env");
    api->ReleaseThreadingOptions(tp);
    env_threads = threads;
    internal(api->CreateCpuMemoryInfo(OrtDeviceAllocator, OrtMemTypeDefault, &cpu), "memory info");
  }
}

std::vector<std::string> names(OrtSession* s, bool inputs) {
  size_t n = 0;
  internal(inputs ? api->SessionGetInputCount(s, &n) : api->SessionGetOutputCount(s, &n), "names");
  OrtAllocator* alloc = nullptr;
  internal(api->GetAllocatorWithDefaultOptions(&alloc), "allocator");
  std::vector<std::string> out;
  for (size_t i = 0; i < n; i++) {
    char* name = nullptr;
    internal(inputs ? api->SessionGetInputName(s, i, alloc, &name) : api->SessionGetOutputName(s, i, alloc, &name),
             "names");
    out.emplace_back(name);
    internal(api->AllocatorFree(alloc, name), "names");
  }
  return out;
}

class OnnxProgram : public Program {
 public:
  OnnxProgram(const std::string& path, int threads, bool expert) : name_(base_name(path)) {
    init(threads);
    OrtSessionOptions* so = nullptr;
    internal(api->CreateSessionOptions(&so), "session options");
    // the options of the Python engine's session_options (runtime/backends.py), so that the kernels, and the
    // tokens, are the same: an expert's 3-matmul graph gains nothing from the full optimiser
    if (expert) internal(api->SetSessionGraphOptimizationLevel(so, ORT_ENABLE_BASIC), "options");
    if (threads > 1 && threads == env_threads) {
      internal(api->DisablePerSessionThreads(so), "options");
    } else {
      internal(api->SetIntraOpNumThreads(so, threads), "options");
      internal(api->SetInterOpNumThreads(so, 1), "options");
    }
    internal(api->SetSessionExecutionMode(so, ORT_SEQUENTIAL), "options");
    // no arena: what an evicted expert's session held goes back to malloc, not into a per-session arena
    internal(api->DisableCpuMemArena(so), "options");
    internal(api->SetSessionLogSeverityLevel(so, 3), "options");
    OrtStatus* s = api->CreateSession(env, path.c_str(), so, &session_);
    api->ReleaseSessionOptions(so);
    check(s, "corrupt_program", "cannot load " + name_ + ": corrupt or truncated ONNX program");
    inputs_ = names(session_, true);
    outputs_ = names(session_, false);
    for (auto& n : inputs_) input_ptrs_.push_back(n.c_str());
    for (auto& n : outputs_) output_ptrs_.push_back(n.c_str());
  }
  ~OnnxProgram() override {
    if (session_) api->ReleaseSession(session_);
  }

  void run(const std::vector<Input>& inputs, std::vector<std::vector<float>>& out) override {
    auto values = execute(inputs);
    out.resize(values.size());
    for (size_t i = 0; i < values.size(); i++) {
      size_t n = 0;
      const float* p = data(values[i], n);
      out[i].assign(p, p + n);
    }
  }

  void run_into(const std::vector<Input>& inputs, float* dst, size_t n) override {
    auto values = execute(inputs);
    size_t got = 0;
    const float* p = data(values[0], got);
    if (got != n)
      fail_artifact("program_failed", name_ + " failed to run: corrupt program or wrong inputs (output of " +
                                          std::to_string(got) + " values, expected " + std::to_string(n) + ")");
    std::memcpy(dst, p, n * sizeof(float));
  }

 private:
  // OrtValues that free themselves
  struct Values {
    std::vector<OrtValue*> v;
    explicit Values(size_t n) : v(n, nullptr) {}
    Values(Values&& o) noexcept : v(std::move(o.v)) {}
    Values(const Values&) = delete;
    ~Values() {
      for (auto* x : v)
        if (x) api->ReleaseValue(x);
    }
    size_t size() const { return v.size(); }
    OrtValue* operator[](size_t i) const { return v[i]; }
  };

  Values execute(const std::vector<Input>& inputs) {
    if (inputs.size() != inputs_.size())
      fail_artifact("program_failed", name_ + " failed to run: corrupt program or wrong inputs (it takes " +
                                          std::to_string(inputs_.size()) + " inputs, the core passed " +
                                          std::to_string(inputs.size()) + ")");
    Values in(inputs.size());
    for (size_t i = 0; i < inputs.size(); i++) {
      std::vector<int64_t> shape(inputs[i].shape.begin(), inputs[i].shape.end());
      size_t count = 1;
      for (int64_t d : shape) count *= size_t(d);
      internal(api->CreateTensorWithDataAsOrtValue(cpu, const_cast<float*>(inputs[i].data), count * sizeof(float),
                                                   shape.data(), shape.size(), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                   &in.v[i]),
               "input");
    }
    Values out(outputs_.size());
    check(api->Run(session_, nullptr, input_ptrs_.data(), in.v.data(), in.size(), output_ptrs_.data(), out.size(),
                   out.v.data()),
          "program_failed", name_ + " failed to run: corrupt program or wrong inputs");
    return out;
  }

  const float* data(OrtValue* v, size_t& n) {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    internal(api->GetTensorTypeAndShape(v, &info), "output");
    OrtStatus* s = api->GetTensorShapeElementCount(info, &n);
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    if (s == nullptr) s = api->GetTensorElementType(info, &type);
    api->ReleaseTensorTypeAndShapeInfo(info);
    internal(s, "output");
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      fail_artifact("program_failed", name_ + " failed to run: an output is not float32");
    void* p = nullptr;
    internal(api->GetTensorMutableData(v, &p), "output");
    return static_cast<const float*>(p);
  }

  std::string name_;
  OrtSession* session_ = nullptr;
  std::vector<std::string> inputs_, outputs_;
  std::vector<const char*> input_ptrs_, output_ptrs_;
};

}  // namespace

std::unique_ptr<Program> open_onnx_program(const std::string& path, int threads, bool expert) {
  return std::make_unique<OnnxProgram>(path, threads, expert);
}

}  // namespace ce
