// Files and programs: size and sha256 checks as runtime/manifest.py does them, the .pte header check of
// runtime/backends.py, and ExecuTorch programs through its Module with the mmap data loader.
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/backend/options.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include "core.h"

// libexecutorch_threadpool.so exports the process-wide pool XNNPACK runs on, but the wheel ships no header
// for it: these declarations match its exported symbols (extension/threadpool/threadpool.h in ExecuTorch).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace ce {

using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using Verification = executorch::runtime::Program::Verification;

void fail_artifact(const std::string& kind, const std::string& message) {
  throw Failure{CE_ERR_ARTIFACT, kind, message};
}
void fail_request(const std::string& kind, const std::string& message) {
  throw Failure{CE_ERR_REQUEST, kind, message};
}

std::string base_name(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string sha256_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<unsigned char> buf(1 << 20);
  ssize_t n;
  while ((n = ::read(fd, buf.data(), buf.size())) > 0) EVP_DigestUpdate(ctx, buf.data(), size_t(n));
  ::close(fd);
  unsigned char digest[32];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, digest, &len);
  EVP_MD_CTX_free(ctx);
  char hex[65];
  for (int i = 0; i < 32; i++) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  return std::string(hex, 64);
}

std::string check_file(const std::string& artifact, const ce_file& f, bool verify) {
  std::string path = artifact + "/" + f.path;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    fail_artifact("missing_file", "missing file " + std::string(f.path) + " in " + artifact);
  if (st.st_size != f.bytes)
    fail_artifact("size_mismatch", std::string(f.path) + " is " + std::to_string(st.st_size) +
                                       " bytes, the manifest says " + std::to_string(f.bytes) +
                                       ": truncated or replaced file");
  if (verify && sha256_file(path) != f.sha256)
    fail_artifact("sha_mismatch", std::string(f.path) + " does not match its sha256 in the manifest: corrupt file");
  return path;
}

static uint32_t u32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
static uint64_t u64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

void check_pte_header(const std::string& path) {
  auto bad = [&](const std::string& why) {
    fail_artifact("corrupt_program",
                  "cannot load " + base_name(path) + ": corrupt or truncated ExecuTorch program (" + why + ")");
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_artifact("missing_file", "missing file " + path);
  struct stat st;
  ::fstat(fd, &st);
  unsigned char head[40];
  ssize_t got = ::pread(fd, head, sizeof head, 0);
  ::close(fd);
  uint64_t size = uint64_t(st.st_size);
  if (got < 40) bad("shorter than its header");
  if (std::memcmp(head + 4, "ET12", 4) != 0) bad("file identifier is not ET12");
  if (std::memcmp(head + 8, "eh00", 4) != 0) bad("no extended header");
  uint64_t root = u32(head), header_len = u32(head + 12), program_size = u64(head + 16),
           segment_base = u64(head + 24), segment_size = header_len >= 32 ? u64(head + 32) : 0;
  if (header_len < 24 || !(8 + header_len <= root && root < program_size && program_size <= size))
    bad("header sizes do not fit the file");
  if (segment_base && !(program_size <= segment_base && segment_base <= segment_base + segment_size &&
                        segment_base + segment_size <= size))
    bad("segment table does not fit the file");
}

// With the packed cache XNNPACK reads none of a program's weights, only the program's own bytes (its flatbuffer,
// then the delegate's blob, the first segment: 2 KB for an expert, on the flatbuffer's last page) and the data it
// does not take from the cache (the weights' scales). Those are read here exactly, so that Module's mapping finds
// them in the page cache; otherwise its first fault on each reads the device's read_ahead_kb window around it
// (8 MB here: the whole expert file), and a miss reads every weight twice: in the program, and packed.
static void preread_program(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  unsigned char head[40];
  if (::pread(fd, head, sizeof head, 0) == ssize_t(sizeof head) && std::memcmp(head + 8, "eh00", 4) == 0) {
    std::vector<unsigned char> buf(std::min<uint64_t>(u64(head + 24), 16 << 20));  // up to the first segment
    (void)!::pread(fd, buf.data(), buf.size(), 0);
  }
  ::close(fd);
}

// The ranges of the packed file that hold the program's weights; every other named datum (the scales) is read
// ahead exactly, as above.
static std::vector<PackedFile::Range> read_ahead(Module& module, const PackedFile& packed) {
  std::vector<PackedFile::Range> out;
  auto program = module.program();
  auto map = program ? program->get_named_data_map() : executorch::runtime::Error::NotFound;
  if (!map.ok() || *map == nullptr) return out;
  static const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  auto n = (*map)->get_num_keys();
  for (uint32_t i = 0; n.ok() && i < *n; i++) {
    auto key = (*map)->get_key(i);
    if (!key.ok()) continue;
    auto held = packed.ranges({*key});
    if (!held.empty()) {
      out.insert(out.end(), held.begin(), held.end());
      continue;
    }
    auto data = (*map)->get_data(*key);  // mapped, not read
    if (!data.ok()) continue;
    uintptr_t lo = uintptr_t(data->data()) & ~(page - 1), hi = uintptr_t(data->data()) + data->size();
    ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_WILLNEED);
  }
  return out;
}

// ExecuTorch logs to stderr (thread pool resets, CPU probes, a program's verification); the core reports each
// failure itself in one line, so the runtime's lines are kept only when COSMOE_EDGE_ET_LOG is set.
static void quiet_log(et_timestamp_t, et_pal_log_level_t level, const char* file, const char*, size_t line,
                      const char* message, size_t length) {
  static const bool keep = std::getenv("COSMOE_EDGE_ET_LOG") != nullptr;
  if (keep) std::fprintf(stderr, "%c executorch:%s:%zu] %.*s\n", char(level), file, line, int(length), message);
}

void set_threads(int threads) {
  static const bool registered = executorch::runtime::register_pal(
      executorch::runtime::PalImpl::create(quiet_log, __FILE__));
  (void)registered;
  executorch::runtime::runtime_init();
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool != nullptr && pool->get_thread_count() != size_t(threads)) pool->_unsafe_reset_threadpool(uint32_t(threads));
}

Pages::Pages(size_t bytes, bool reserve_only) : n_(bytes) {
  if (bytes == 0) return;
  p_ = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | (reserve_only ? MAP_NORESERVE : 0),
              -1, 0);
  if (p_ == MAP_FAILED) {
    p_ = nullptr;
    throw std::bad_alloc();
  }
}
Pages::~Pages() {
  if (p_) ::munmap(p_, n_);
}
Pages::Pages(Pages&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
Pages& Pages::operator=(Pages&& o) noexcept {
  if (this != &o) {
    if (p_) ::munmap(p_, n_);
    p_ = o.p_, n_ = o.n_;
    o.p_ = nullptr, o.n_ = 0;
  }
  return *this;
}

// Address space only: pages are resident once a program writes them. Two buffers of 256 MiB hold any plan of
// ours (one buffer each; the head's, the largest, is vocab x layer_max_tokens floats).
static constexpr size_t kArenaBuffers = 2, kArenaBytes = size_t(256) << 20;

struct Arena::Spans {
  std::vector<executorch::runtime::Span<uint8_t>> spans;
  std::unique_ptr<executorch::runtime::HierarchicalAllocator> allocator;
};

Arena::Arena() : spans_(std::make_unique<Spans>()) {
  for (size_t i = 0; i < kArenaBuffers; i++) {
    buffers_.emplace_back(kArenaBytes, true);
    spans_->spans.emplace_back(buffers_.back().bytes(), kArenaBytes);
  }
  spans_->allocator = std::make_unique<executorch::runtime::HierarchicalAllocator>(
      executorch::runtime::Span<executorch::runtime::Span<uint8_t>>(spans_->spans.data(), spans_->spans.size()));
}
Arena::~Arena() = default;

executorch::runtime::HierarchicalAllocator* Arena::fit(const std::vector<int64_t>& buffer_sizes) {
  if (buffer_sizes.size() > kArenaBuffers) return nullptr;
  for (int64_t n : buffer_sizes)
    if (n < 0 || size_t(n) > kArenaBytes) return nullptr;
  return spans_->allocator.get();
}

static std::string error_text(Error e);

// An ExecuTorch program (.pte, XNNPACK delegate) with its method "forward" loaded, mapped from storage.
class PteProgram : public Program {
 public:
  PteProgram(const std::string& path, const Backend& backend, bool check_header);
  void run(const std::vector<Input>& inputs, std::vector<std::vector<float>>& out) override;
  void run_into(const std::vector<Input>& inputs, float* dst, size_t n) override;

 private:
  std::vector<EValue> execute(const std::vector<Input>& inputs);
  std::string name_;
  std::shared_ptr<Arena> arena_;  // kept while the method's plan lies in it
  std::unique_ptr<Module> module_;
};

std::unique_ptr<Program> open_program(const std::string& path, const Backend& backend, bool check_header, bool expert) {
  if (backend.kind == CE_BACKEND_ONNX) return open_onnx_program(path, backend.threads, expert);
  return std::make_unique<PteProgram>(path, backend, check_header);
}

#ifndef CE_ONNX
std::unique_ptr<Program> open_onnx_program(const std::string&, int, bool) {
  fail_request("no_onnx_core", "this native core was built without onnxruntime's C API headers (see the CMake warning "
                               "of its build; make setup fetches them): pass --engine python for --backend onnx");
}
#endif

void save_packed_cache() {
  executorch::runtime::BackendOptions<1> save;
  save.set_option("save_weight_cache_on_disk", true);
  Error e = executorch::runtime::set_option("XnnpackBackend", save.view());
  if (e != Error::Ok) fail_artifact("packed_cache", "XNNPACK could not write its packed-weights cache (" + error_text(e) + ")");
}

static std::string error_text(Error e) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "ExecuTorch error 0x%x", unsigned(e));
  return buf;
}

PteProgram::PteProgram(const std::string& path, const Backend& backend, bool check_header) : name_(base_name(path)) {
  if (check_header) check_pte_header(path);
  if (backend.packed) preread_program(path);
  // Mmap: the program's bytes stay in the page cache and leave with the mapping; nothing is copied to the heap
  module_ = std::make_unique<Module>(path, Module::LoadMode::Mmap);
  executorch::runtime::LoadBackendOptionsMap options;
  executorch::runtime::BackendOptions<4> xnnpack;
  if (!backend.packed_cache.empty()) {
    // XNNPACK keeps packed weights keyed by the sha256 of their bytes in one file mapped from storage: a
    // load then maps packed bytes instead of packing them (edge-prepare writes it)
    xnnpack.set_option("weight_cache_enabled", true);
    xnnpack.set_option("packed_cache_path", backend.packed_cache.c_str());
    options.set_options("XnnpackBackend", xnnpack.view());
  }
  Error e = backend.packed_cache.empty() ? module_->load(Verification::InternalConsistency)
                                         : module_->load(options, Verification::InternalConsistency);
  if (e == Error::Ok && backend.packed) packed_ranges_ = read_ahead(*module_, *backend.packed);
  executorch::runtime::HierarchicalAllocator* planned = nullptr;
  if (e == Error::Ok && backend.arena) {
    auto meta = module_->method_meta("forward");
    if (!meta.ok()) {
      e = meta.error();
    } else {
      std::vector<int64_t> sizes;
      for (size_t i = 0; i < meta->num_memory_planned_buffers(); i++) {
        auto n = meta->memory_planned_buffer_size(i);
        sizes.push_back(n.ok() ? *n : -1);
      }
      planned = backend.arena->fit(sizes);
      if (planned) arena_ = backend.arena;
    }
  }
  if (e == Error::Ok) e = module_->load_method("forward", planned);
  if (e != Error::Ok)
    fail_artifact("corrupt_program",
                  "cannot load " + name_ + ": corrupt or truncated ExecuTorch program (" + error_text(e) + ")");
}

// Runs "forward" on float32 inputs; the outputs live in the method's planned memory until its next call.
std::vector<EValue> PteProgram::execute(const std::vector<Input>& inputs) {
  std::vector<executorch::extension::TensorPtr> tensors;
  std::vector<EValue> values;
  tensors.reserve(inputs.size());
  for (const auto& in : inputs) {
    std::vector<executorch::aten::SizesType> sizes(in.shape.begin(), in.shape.end());
    tensors.push_back(executorch::extension::from_blob(const_cast<float*>(in.data), std::move(sizes)));
    values.emplace_back(*tensors.back());
  }
  auto result = module_->execute("forward", values);
  if (!result.ok())
    fail_artifact("program_failed", name_ + " failed to run: corrupt program or wrong inputs (" +
                                        error_text(result.error()) + ")");
  return std::move(*result);
}

void PteProgram::run(const std::vector<Input>& inputs, std::vector<std::vector<float>>& out) {
  auto result = execute(inputs);
  out.resize(result.size());
  for (size_t i = 0; i < result.size(); i++) {
    const auto& t = result[i].toTensor();
    const float* p = t.const_data_ptr<float>();
    out[i].assign(p, p + t.numel());
  }
}

void PteProgram::run_into(const std::vector<Input>& inputs, float* dst, size_t n) {
  auto result = execute(inputs);
  const auto& t = result[0].toTensor();
  if (size_t(t.numel()) != n)
    fail_artifact("program_failed", name_ + " failed to run: corrupt program or wrong inputs (output of " +
                                        std::to_string(t.numel()) + " values, expected " + std::to_string(n) + ")");
  std::memcpy(dst, t.const_data_ptr<float>(), n * sizeof(float));
}

}  // namespace ce
