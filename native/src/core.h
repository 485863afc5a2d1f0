// The core's internals: what the C API (c_api.cpp) wraps. Errors are thrown as Failure and turned into a
// ce_status and one line at the C boundary.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "cosmoe_edge.h"

namespace executorch::runtime {
class HierarchicalAllocator;
}

namespace ce {

struct Failure {
  ce_status status;
  std::string kind, message;
};
[[noreturn]] void fail_artifact(const std::string& kind, const std::string& message);
[[noreturn]] void fail_request(const std::string& kind, const std::string& message);
void set_last_error(const Failure& f);  // what ce_last_error() says next (thread-local)

// Runs f at the C boundary: a Failure (or any std::exception) becomes a ce_status and ce_last_error()'s line.
template <typename F>
ce_status guarded(F&& f) {
  try {
    f();
    return CE_OK;
  } catch (const Failure& e) {
    set_last_error(e);
    return e.status;
  } catch (const std::exception& e) {
    Failure internal{CE_ERR_INTERNAL, "internal", e.what()};
    set_last_error(internal);
    return internal.status;
  }
}

// ---- files and programs (programs.cpp) ----
std::string base_name(const std::string& path);  // the file's name without its folder
std::string sha256_file(const std::string& path);
// The file's path after checking its size (always) and sha256 (with verify): runtime/manifest.py check_file.
std::string check_file(const std::string& artifact, const ce_file& f, bool verify);
void check_pte_header(const std::string& path);  // runtime/backends.py check_pte_header
void set_threads(int threads);
int64_t memory_available();  // bytes: MemAvailable, and at most what this process's memory cgroup has left
void drop_cached(const std::string& path);  // the file's pages that no process maps leave the page cache
void save_packed_cache();  // XNNPACK writes the packed weights it holds to its packed_cache file

// Zeroed memory whose pages become resident only when written (an anonymous mapping): a KV cache sized for
// max_seq_len then costs what the positions used so far cost, not the whole window at session start.
class Pages {
 public:
  Pages() = default;
  explicit Pages(size_t bytes, bool reserve_only = false);
  ~Pages();
  Pages(Pages&& o) noexcept;
  Pages& operator=(Pages&& o) noexcept;
  float* floats() const { return static_cast<float*>(p_); }
  uint8_t* bytes() const { return static_cast<uint8_t*>(p_); }
  size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

// Planned memory (a program's activations) that every program of a model shares. The programs run one at a
// time on the session's thread and the core copies their outputs out after each call, so a program needs its
// activations only while it runs; and none holds state between calls (the KV cache is an input). Module's own
// plan gives each program zero-filled buffers of its own: 5.8 MB per layer on moe-1.2b, 102 MB for the backbone.
// The arena is reserved address space, so what is resident is the largest plan actually run.
class Arena {
 public:
  Arena();
  ~Arena();
  // the allocator to load a method with, or nullptr when its plan does not fit (it then gets its own)
  executorch::runtime::HierarchicalAllocator* fit(const std::vector<int64_t>& buffer_sizes);

 private:
  std::vector<Pages> buffers_;
  struct Spans;
  std::unique_ptr<Spans> spans_;
};

// The prepared packed-weights file (packed.cpp): which of its byte ranges hold a program's weights, and advice to
// the kernel that an evicted program's ranges are done with.
class PackedFile {
 public:
  struct Range {
    uint64_t offset, bytes;
  };
  PackedFile(const std::string& path, ce_evicted_pages evicted);  // auto: resolved here
  ~PackedFile();
  std::vector<Range> ranges(const std::vector<std::string>& data_keys) const;
  void load(const std::vector<Range>& ranges);     // read them in now
  void release(const std::vector<Range>& ranges);  // an evicted program's: dropped, or left as they are
  bool drops() const { return drop_; }

 private:
  uintptr_t base();
  std::string path_;
  int fd_ = -1;
  bool drop_ = false;
  uint64_t dev_ = 0, ino_ = 0, size_ = 0;
  std::map<std::string, Range> entries_;
  std::mutex mu_;
  uintptr_t base_ = 0;
  std::set<uint64_t> mapped_;  // offsets of the entries loaded and not dropped since
};

struct Backend {  // what every program of a model is loaded with
  ce_backend kind = CE_BACKEND_EXECUTORCH;
  int threads = 1;
  std::string packed_cache;       // XNNPACK packed-weights cache, or empty
  std::shared_ptr<Arena> arena;  // planned memory shared by the model's programs, or null: each its own
  std::shared_ptr<PackedFile> packed;  // the packed_cache file's index, or null
};

// A program of the artifact (a backbone layer, the head or an expert) run on float32 arrays: ExecuTorch's
// (.pte, XNNPACK delegate, programs.cpp) or onnxruntime's (.onnx, onnx.cpp), as the model's backend says.
class Program {
 public:
  struct Input {
    const float* data;
    std::vector<int32_t> shape;
  };
  virtual ~Program() = default;
  // outputs copied into `out` (one vector per output)
  virtual void run(const std::vector<Input>& inputs, std::vector<std::vector<float>>& out) = 0;
  // the first output only, written to `dst` (n floats expected)
  virtual void run_into(const std::vector<Input>& inputs, float* dst, size_t n) = 0;
  // the packed file's ranges that hold this program's weights (ExecuTorch with a packed cache), else empty
  const std::vector<PackedFile::Range>& packed_ranges() const { return packed_ranges_; }

 protected:
  std::vector<PackedFile::Range> packed_ranges_;
};
// check_header: a .pte's header is checked first (when its sha256 was not); expert: an expert's program
std::unique_ptr<Program> open_program(const std::string& path, const Backend& backend, bool check_header, bool expert);
std::unique_ptr<Program> open_onnx_program(const std::string& path, int threads, bool expert);

// ---- dispatch (dispatch.cpp) ----
using Key = int32_t;  // layer * num_experts + expert

class Policy {
 public:
  Policy(int n_layers, int num_experts) : n_layers_(n_layers), num_experts_(num_experts) {}
  virtual ~Policy() = default;
  virtual bool keeps() const { return true; }
  virtual void request(Key) {}
  virtual void touch(Key k);
  void arrived(Key k);
  void forget(Key k);
  virtual Key victim(const std::vector<Key>& candidates) = 0;

 protected:
  int rank(Key k) const;  // place in the recency order, 0 the oldest; -1: none
  int n_layers_, num_experts_;
  std::list<Key> order_;  // oldest first
  std::unordered_map<Key, std::list<Key>::iterator> where_;
};
std::unique_ptr<Policy> make_policy(const std::string& name, int n_layers, int num_experts);

// What a cache holds for a resident expert; released when evicted.
struct Resident {
  virtual ~Resident() = default;
};

// Resident experts under a byte budget: runtime/cache.py ExpertCache (no promotion: that is ONNX's weights form).
class Cache {
 public:
  using Loader = std::function<std::unique_ptr<Resident>(Key)>;
  Cache(std::vector<int64_t> costs, int n_layers, int num_experts, int64_t budget, const std::string& policy,
        Loader load);
  bool is_resident(Key k);
  Resident* get(Key k, const std::vector<Key>& pinned);
  bool prefetch(Key k, const std::vector<Key>& pinned);
  int fill(const std::vector<Key>& keys);
  void reset_counters();
  void release_all();
  int64_t cost(Key k) const { return costs_[k]; }

  ce_event_fn on_event = nullptr;
  void* event_user = nullptr;
  int64_t budget, bytes = 0, peak_bytes = 0, hits = 0, misses = 0, evictions = 0, prefetch_useful = 0;

 private:
  void event(ce_event kind, Key k);
  void make_room(int64_t cost, const std::vector<Key>& pinned);
  void insert(Key k, std::unique_ptr<Resident> r);
  void evict(Key k);
  std::vector<int64_t> costs_;  // per key, -1: not in the artifact
  int num_experts_;
  std::unique_ptr<Policy> policy_;
  Loader load_;
  std::vector<Key> order_;  // resident keys in the order they came (the candidates' order)
  std::unordered_map<Key, std::unique_ptr<Resident>> resident_;
  std::unordered_map<Key, std::shared_ptr<std::promise<void>>> loading_;
  std::unordered_map<Key, std::shared_future<void>> loading_done_;
  std::vector<bool> prefetched_;
  std::mutex mu_;
};

struct Selection {
  int experts_per_token;
  std::string on_miss = "wait";
  float skip_below = 0.5f, cache_bias = 0.0f;
  bool needs_residency() const { return on_miss != "wait" || cache_bias != 0.0f; }
};

struct Counts {
  int64_t experts_run = 0, compressed = 0, misses_compressed = 0, misses_skipped = 0, bias_changed = 0;
};

// runtime/routing.py route for one row: experts by descending p (ties to the lower id), weights
void route_row(const float* logits, int E, int top_k, bool renorm, int32_t* experts, float* weights);
void softmax_row(const float* x, int n, float* out);
float numpy_sum(const float* a, int n);  // numpy's pairwise float32 sum, so weights match the reference
void route_cmoe(const float* scores, int T, int E, int top_k, const float* bias, const float* scale, int32_t* experts,
                float* weights);
// runtime/selection.py select; returns whether theta was written
bool select(const float* logits, int T, int E, int top_k, bool renorm, const Selection& s, const float* vectors, int D,
            const uint8_t* resident, float sticky_delta, float* sticky_prev, int32_t* experts, float* weights,
            float* theta, Counts& counts);

void rope_row(int head_dim, double theta, int pos, float* cos_row, float* sin_row);
void attention_mask(int pos0, int n_new, int rep, float* out);

}  // namespace ce
