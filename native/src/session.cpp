// The decode loop (runtime/engine.py Engine): per layer the backbone program, the router's selection,
// the experts (loaded on a miss), then the head. A model holds what a session only reads; a session holds
// one sequence's state and its expert dispatch.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "core.h"

namespace ce {

struct ExpertProgram : Resident {
  ExpertProgram(std::unique_ptr<Program> p, std::shared_ptr<PackedFile> packed)
      : program(std::move(p)), packed(std::move(packed)) {
    if (this->packed) this->packed->load(program->packed_ranges());
  }
  ~ExpertProgram() override {
    auto ranges = program->packed_ranges();
    program.reset();
    if (packed) packed->release(ranges);  // evicted: its packed pages leave the process (packed.cpp)
  }
  std::unique_ptr<Program> program;
  std::shared_ptr<PackedFile> packed;
};

struct Identity {  // a file as stat saw it when its sha256 matched
  uint64_t ino = 0, size = 0;
  int64_t mtime_ns = -1;
  bool operator==(const Identity& o) const { return ino == o.ino && size == o.size && mtime_ns == o.mtime_ns; }
};

}  // namespace ce

using namespace ce;

struct ce_model {
  // manifest "model" and the files, owned
  ce_model_params p{};
  std::string artifact;
  std::vector<float> cmoe_bias, cmoe_scale, vectors, routers;
  std::vector<ce_expert> experts;  // indexed by key; file.path empty: not in the artifact
  std::vector<std::string> expert_paths, expert_shas;
  std::vector<int64_t> costs;
  Backend backend;
  std::vector<std::unique_ptr<Program>> layers;
  std::unique_ptr<Program> head;
  // embedding.safetensors, mapped
  void* map = MAP_FAILED;
  size_t map_bytes = 0;
  const int8_t* emb_i8 = nullptr;
  const float* emb_f32 = nullptr;
  const float* emb_scale = nullptr;
  std::vector<float> rope_cos, rope_sin;  // (max_seq_len, head_dim)
  std::mutex verify_mu;
  std::vector<Identity> verified;  // per key

  ~ce_model() {
    if (map != MAP_FAILED) munmap(map, map_bytes);
  }

  int key(int layer, int expert) const { return layer * p.num_experts + expert; }

  std::unique_ptr<Resident> load_expert(Key k, int64_t& loads, int64_t& load_ns) {
    auto t0 = std::chrono::steady_clock::now();
    if (expert_paths[k].empty())
      fail_artifact("missing_expert", "the manifest lists no expert " + std::to_string(k % p.num_experts) +
                                          " in layer " + std::to_string(k / p.num_experts));
    const ce_expert& e = experts[k];
    std::string path = artifact + "/" + e.file.path;
    struct stat st;
    Identity id;
    bool have = ::stat(path.c_str(), &st) == 0;
    if (have) id = {uint64_t(st.st_ino), uint64_t(st.st_size), int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
    bool fresh;
    {
      std::lock_guard<std::mutex> g(verify_mu);
      fresh = p.verify_sha && !(have && verified[k] == id);
    }
    check_file(artifact, e.file, fresh);
    if (p.verify_sha) {
      std::lock_guard<std::mutex> g(verify_mu);
      verified[k] = id;
    }
    auto expert = std::make_unique<ExpertProgram>(open_program(path, backend, !p.verify_sha, true), backend.packed);
    // what the load read of the program (its sha256, its scales) is not needed again while it is resident
    if (backend.packed && backend.packed->drops()) drop_cached(path);
    loads++;
    load_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    return expert;
  }
};

struct ce_session {
  ce_model* m;
  Selection sel;
  bool cmoe, prefetch;
  std::unique_ptr<Cache> cache;
  std::atomic<int64_t> loads{0}, load_ns{0};
  int64_t prefetch_issued = 0;
  std::future<void> prefetch_pending;
  Counts counts;
  int pos = 0;
  std::vector<Pages> k_cache, v_cache;  // per layer (max_seq_len, n_kv_heads, head_dim)
  std::vector<std::vector<float>> sticky;           // per layer (E), empty without a sticky delta
  std::vector<std::set<int>> last;                  // per layer: the experts of the previous token
  std::vector<bool> have_last;
  int64_t switch_pairs = 0, switched = 0;
  std::vector<std::vector<float>> outs;  // program outputs, reused

  void reset() {
    pos = 0;
    for (auto& s : sticky) std::fill(s.begin(), s.end(), 0.f);
    for (auto& l : last) l.clear();
    std::fill(have_last.begin(), have_last.end(), false);
    switch_pairs = switched = 0;
  }

  void wait_prefetch() {
    if (prefetch_pending.valid()) prefetch_pending.get();  // also raises a failed load here
  }

  void forward(const int32_t* ids, int n, bool all_logits, float* logits);
  std::vector<float> step(const int32_t* ids, int T);
  void experts(int layer, const std::vector<float>& x, int T, const std::vector<int32_t>& ex,
               const std::vector<float>& w, std::vector<float>& h);
  void prefetch_next(int layer, const std::vector<float>& x, int T);
  void log_routing(int layer, const std::vector<int32_t>& ex, int T);
};

void ce_session::forward(const int32_t* ids, int n, bool all_logits, float* logits) {
  const auto& p = m->p;
  if (pos + n > p.max_seq_len)
    fail_request("too_long", "sequence would exceed the model's " + std::to_string(p.max_seq_len) + " positions");
  for (int id = 0; id < n; id++)
    if (ids[id] < 0 || ids[id] >= p.vocab_size)
      fail_request("bad_token", "token id " + std::to_string(ids[id]) + " is outside the vocabulary");
  const int chunk = p.layer_max_tokens, D = p.dim, V = p.vocab_size;
  for (int i = 0; i < n; i += chunk) {
    int T = std::min(chunk, n - i);
    std::vector<float> h = step(ids + i, T);
    if (all_logits) {
      m->head->run_into({{h.data(), {T, D}}}, logits + size_t(i) * V, size_t(T) * V);
    } else if (i + chunk >= n) {
      m->head->run_into({{h.data() + size_t(T - 1) * D, {1, D}}}, logits, size_t(V));
    }
  }
}

std::vector<float> ce_session::step(const int32_t* ids, int T) {
  const auto& p = m->p;
  const int D = p.dim, E = p.num_experts, hd = p.head_dim, kvh = p.n_kv_heads, rep = p.n_heads / p.n_kv_heads;
  const int p0 = pos, past = std::max(p0, 1);
  std::vector<float> h(size_t(T) * D);
  for (int t = 0; t < T; t++) {
    float* row = h.data() + size_t(t) * D;
    size_t off = size_t(ids[t]) * D;
    if (m->emb_i8) {
      float scale = m->emb_scale ? m->emb_scale[ids[t]] : 1.f;
      for (int d = 0; d < D; d++) row[d] = m->emb_scale ? float(m->emb_i8[off + d]) * scale : float(m->emb_i8[off + d]);
    } else {
      std::copy(m->emb_f32 + off, m->emb_f32 + off + D, row);
    }
  }
  std::vector<float> mask(size_t(rep) * T * (past + T));
  attention_mask(p0, T, rep, mask.data());
  const float* cos = m->rope_cos.data() + size_t(p0) * hd;
  const float* sin = m->rope_sin.data() + size_t(p0) * hd;
  std::vector<int32_t> ex(size_t(T) * p.top_k);
  std::vector<float> w(size_t(T) * p.top_k), theta;
  std::vector<uint8_t> resident(E);
  const size_t row_kv = size_t(kvh) * hd;
  for (int layer = 0; layer < p.n_layers; layer++) {
    m->layers[layer]->run({{h.data(), {T, D}},
                           {cos, {T, 1, hd}},
                           {sin, {T, 1, hd}},
                           {k_cache[layer].floats(), {past, kvh, hd}},
                           {v_cache[layer].floats(), {past, kvh, hd}},
                           {mask.data(), {rep * T, past + T}}},
                          outs);
    // outs: h_out, x, router_logits, k, v
    std::copy(outs[3].begin(), outs[3].end(), k_cache[layer].floats() + size_t(p0) * row_kv);
    std::copy(outs[4].begin(), outs[4].end(), v_cache[layer].floats() + size_t(p0) * row_kv);
    std::vector<float> x = std::move(outs[1]);
    const float* logits = outs[2].data();
    bool has_theta = false;
    if (cmoe) {
      route_cmoe(logits, T, E, p.top_k, m->cmoe_bias.data() + size_t(layer) * E,
                 m->cmoe_scale.data() + size_t(layer) * E, ex.data(), w.data());
      counts.experts_run += int64_t(T) * p.top_k;
    } else {
      if (sel.needs_residency())
        for (int e = 0; e < E; e++) resident[e] = cache->is_resident(m->key(layer, e));
      const float* vec = m->vectors.empty() ? nullptr : m->vectors.data() + size_t(layer) * E * D;
      if (vec) theta.resize(size_t(T) * D);
      has_theta = select(logits, T, E, p.top_k, p.router_renorm, sel, vec, D, resident.data(), p.sticky_delta,
                         sticky.empty() ? nullptr : sticky[layer].data(), ex.data(), w.data(), theta.data(), counts);
    }
    log_routing(layer, ex, T);
    prefetch_next(layer, x, T);
    if (has_theta)
      for (size_t i = 0; i < x.size(); i++) x[i] = x[i] * theta[i];
    std::vector<float> h_out = std::move(outs[0]);
    experts(layer, x, T, ex, w, h_out);
    h = std::move(h_out);
    outs.resize(5);
  }
  pos += T;
  return h;
}

// h += sum over each token's k experts of weight * expert(x); each expert runs once on all its tokens (in
// slices of the program's maximum), resident experts first, then by id; the sum is taken in expert-id order
// whatever ran first, as the Python engine does (float addition is not associative).
void ce_session::experts(int layer, const std::vector<float>& x, int T, const std::vector<int32_t>& ex,
                         const std::vector<float>& w, std::vector<float>& h) {
  const auto& p = m->p;
  const int D = p.dim, K = p.top_k;
  std::vector<int> ids;
  for (int32_t e : ex)
    if (e >= 0 && std::find(ids.begin(), ids.end(), e) == ids.end()) ids.push_back(e);
  std::vector<std::pair<bool, int>> order;
  for (int e : ids) order.push_back({!cache->is_resident(m->key(layer, e)), e});
  std::sort(order.begin(), order.end());
  std::map<int, std::pair<std::vector<int>, std::vector<float>>> ys;  // expert -> (rows, weighted outputs)
  std::vector<float> xin, y;
  for (auto [missing, e] : order) {
    Key k = m->key(layer, e);
    auto* program = static_cast<ExpertProgram*>(cache->get(k, {k}))->program.get();
    std::vector<int> rows, slots;
    for (int t = 0; t < T; t++)
      for (int j = 0; j < K; j++)
        if (ex[size_t(t) * K + j] == e) rows.push_back(t), slots.push_back(j);
    auto& [out_rows, out] = ys[e];
    out_rows = rows;
    out.resize(rows.size() * D);
    for (size_t i = 0; i < rows.size(); i += p.expert_max_tokens) {
      int n = int(std::min<size_t>(p.expert_max_tokens, rows.size() - i));
      xin.resize(size_t(n) * D);
      for (int r = 0; r < n; r++) std::copy_n(x.data() + size_t(rows[i + r]) * D, D, xin.data() + size_t(r) * D);
      y.resize(size_t(n) * D);
      program->run_into({{xin.data(), {n, D}}}, y.data(), y.size());
      for (int r = 0; r < n; r++) {
        float wt = w[size_t(rows[i + r]) * K + slots[i + r]];
        for (int d = 0; d < D; d++) out[(i + r) * D + d] = wt * y[size_t(r) * D + d];
      }
    }
  }
  // decode: out = y_a + y_b (+ ...); prefill: zeros, then += each; the same values either way
  std::vector<float> sum(size_t(T) * D, 0.f);
  std::vector<bool> started(T, false);
  for (auto& [e, ry] : ys) {
    auto& [rows, out] = ry;
    for (size_t r = 0; r < rows.size(); r++) {
      float* s = sum.data() + size_t(rows[r]) * D;
      const float* o = out.data() + r * D;
      if (T == 1 && !started[rows[r]]) {
        std::copy_n(o, D, s);
      } else {
        for (int d = 0; d < D; d++) s[d] = s[d] + o[d];
      }
      started[rows[r]] = true;
    }
  }
  for (size_t i = 0; i < h.size(); i++) h[i] = h[i] + sum[i];
}

void ce_session::log_routing(int layer, const std::vector<int32_t>& ex, int T) {
  const int K = m->p.top_k;
  for (int t = 0; t < T; t++) {
    std::set<int> s;
    for (int j = 0; j < K; j++)
      if (ex[size_t(t) * K + j] >= 0) s.insert(ex[size_t(t) * K + j]);
    if (have_last[layer]) {
      switch_pairs += int64_t(s.size());
      for (int e : s) switched += !last[layer].count(e);
    }
    last[layer] = std::move(s);
    have_last[layer] = true;
  }
}

// Guess layer+1's experts by applying its router to this layer's expert input, and load them on a worker
// while this layer's experts run. A prefetch pins only the layer whose experts run beside it, so the
// previous one must end before this layer's experts run: otherwise it could evict one in use.
void ce_session::prefetch_next(int layer, const std::vector<float>& x, int T) {
  if (!prefetch) return;
  wait_prefetch();
  const auto& p = m->p;
  if (layer + 1 >= p.n_layers || m->routers.empty()) return;
  const int E = p.num_experts, D = p.dim, k = sel.experts_per_token;
  const float* router = m->routers.data() + size_t(layer + 1) * E * D;
  std::vector<float> z(E), wts(k);
  std::vector<int32_t> guess(k);
  std::set<int> chosen;
  for (int t = 0; t < T; t++) {
    for (int e = 0; e < E; e++) {
      float acc = 0.f;
      for (int d = 0; d < D; d++) acc += x[size_t(t) * D + d] * router[size_t(e) * D + d];
      z[e] = acc;
    }
    route_row(z.data(), E, k, true, guess.data(), wts.data());
    chosen.insert(guess.begin(), guess.end());
  }
  std::vector<Key> keys;
  for (int e : chosen)
    if (!cache->is_resident(m->key(layer + 1, e))) keys.push_back(m->key(layer + 1, e));
  if (keys.empty()) return;
  prefetch_issued += int64_t(keys.size());
  std::vector<Key> current;
  for (int e = 0; e < E; e++) current.push_back(m->key(layer, e));
  prefetch_pending = std::async(std::launch::async, [this, keys, current] {
    for (Key key : keys) cache->prefetch(key, current);
  });
}

// ---------------- the C API ----------------

namespace {
thread_local std::string last_error, last_kind;

}  // namespace

void ce::set_last_error(const Failure& f) {
  last_error = f.message;
  last_kind = f.kind;
}

namespace {
std::string str(const char* s) { return s ? s : ""; }

std::vector<float> copy(const float* a, size_t n) { return a ? std::vector<float>(a, a + n) : std::vector<float>(); }
}  // namespace

extern "C" {

const char* ce_last_error(void) { return last_error.c_str(); }
const char* ce_last_error_kind(void) { return last_kind.c_str(); }
int32_t ce_abi_version(void) { return CE_ABI_VERSION; }

ce_status ce_model_open(const ce_model_params* params, ce_model** out) {
  *out = nullptr;
  auto m = std::make_unique<ce_model>();
  return guarded([&] {
    m->p = *params;
    auto& p = m->p;
    m->artifact = str(params->artifact);
    const size_t LE = size_t(p.n_layers) * p.num_experts;
    m->cmoe_bias = copy(p.cmoe_bias, LE);
    m->cmoe_scale = copy(p.cmoe_scale, LE);
    m->vectors = copy(p.vectors, LE * p.dim);
    m->routers = copy(p.routers, LE * p.dim);
    if (p.backend != CE_BACKEND_EXECUTORCH && p.backend != CE_BACKEND_ONNX)
      fail_request("bad_backend", "backend " + std::to_string(p.backend) + " is neither ExecuTorch nor ONNX");
    if (p.backend == CE_BACKEND_ONNX && p.packed_cache)
      fail_request("bad_backend", "a packed-weights cache is ExecuTorch's (XNNPACK): ONNX programs take none");
    m->backend.kind = p.backend, m->backend.threads = std::max(1, p.threads);
    m->backend.packed_cache = str(p.packed_cache);
    if (p.backend == CE_BACKEND_EXECUTORCH) set_threads(m->backend.threads);
    // pointers into the caller's params do not outlive this call: keep our own strings
    m->experts.assign(LE, ce_expert{});
    m->expert_paths.assign(LE, "");
    m->expert_shas.assign(LE, "");
    m->costs.assign(LE, 0);
    m->verified.assign(LE, Identity{});
    for (int i = 0; i < p.n_experts; i++) {
      const ce_expert& e = p.experts[i];
      if (e.layer < 0 || e.layer >= p.n_layers || e.expert < 0 || e.expert >= p.num_experts)
        fail_artifact("bad_manifest", "the manifest lists expert " + std::to_string(e.expert) + " of layer " +
                                          std::to_string(e.layer) + ", outside the model");
      int k = m->key(e.layer, e.expert);
      m->expert_paths[k] = str(e.file.path);
      m->expert_shas[k] = str(e.file.sha256);
      m->experts[k] = e;
      m->costs[k] = e.cost;
    }
    for (size_t k = 0; k < LE; k++) {
      m->experts[k].file.path = m->expert_paths[k].c_str();
      m->experts[k].file.sha256 = m->expert_shas[k].c_str();
    }
    p.experts = nullptr;
    p.layers = nullptr;
    bool verify = p.verify_sha != 0;
    // the embedding: mapped, its rows paged in as tokens ask for them
    std::string emb = check_file(m->artifact, params->embedding, verify);
    int fd = ::open(emb.c_str(), O_RDONLY | O_CLOEXEC);
    m->map_bytes = size_t(params->embedding.bytes);
    m->map = ::mmap(nullptr, m->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (m->map == MAP_FAILED) fail_artifact("missing_file", "cannot map " + emb);
    size_t row_bytes = size_t(p.dim) * (p.embedding_int8 ? 1 : 4);
    if (p.embedding_weight_offset < 0 ||
        size_t(p.embedding_weight_offset) + size_t(p.vocab_size) * row_bytes > m->map_bytes ||
        (p.embedding_scale_offset >= 0 && size_t(p.embedding_scale_offset) + size_t(p.vocab_size) * 4 > m->map_bytes))
      fail_artifact("corrupt_program", "embedding.safetensors does not hold the model's embedding rows");
    const char* base = static_cast<const char*>(m->map);
    if (p.embedding_int8)
      m->emb_i8 = reinterpret_cast<const int8_t*>(base + p.embedding_weight_offset);
    else
      m->emb_f32 = reinterpret_cast<const float*>(base + p.embedding_weight_offset);
    if (p.embedding_scale_offset >= 0) m->emb_scale = reinterpret_cast<const float*>(base + p.embedding_scale_offset);
    p.embedding = {};
    p.head = {};
    // the RoPE table, as runtime/kv.py rope_rows computes it
    m->rope_cos.resize(size_t(p.max_seq_len) * p.head_dim);
    m->rope_sin.resize(m->rope_cos.size());
    for (int pos = 0; pos < p.max_seq_len; pos++)
      rope_row(p.head_dim, p.rope_theta, pos, m->rope_cos.data() + size_t(pos) * p.head_dim,
               m->rope_sin.data() + size_t(pos) * p.head_dim);
    if (p.backend == CE_BACKEND_EXECUTORCH) m->backend.arena = std::make_shared<Arena>();
    if (!m->backend.packed_cache.empty())
      m->backend.packed = std::make_shared<PackedFile>(m->backend.packed_cache, p.evicted_pages);
    for (int l = 0; l < p.n_layers; l++)
      m->layers.push_back(open_program(check_file(m->artifact, params->layers[l], verify), m->backend, !verify, false));
    m->head = open_program(check_file(m->artifact, params->head, verify), m->backend, !verify, false);
    if (m->backend.packed) {
      std::vector<PackedFile::Range> backbone;
      for (const auto& layer : m->layers)
        backbone.insert(backbone.end(), layer->packed_ranges().begin(), layer->packed_ranges().end());
      backbone.insert(backbone.end(), m->head->packed_ranges().begin(), m->head->packed_ranges().end());
      m->backend.packed->load(backbone);
    }
    p.artifact = nullptr;
    p.packed_cache = nullptr;
    p.cmoe_bias = p.cmoe_scale = p.vectors = p.routers = nullptr;
    *out = m.release();
  });
}

void ce_model_free(ce_model* model) { delete model; }

ce_status ce_session_open(ce_model* model, const ce_session_params* params, ce_session** out) {
  *out = nullptr;
  auto s = std::make_unique<ce_session>();
  return guarded([&] {
    const auto& p = model->p;
    s->m = model;
    s->sel = {params->experts_per_token, str(params->on_miss), params->skip_below, params->cache_bias};
    if (s->sel.experts_per_token < 1 || s->sel.experts_per_token > p.top_k)
      fail_request("bad_option", "--experts-per-token must be between 1 and the model's top-k (" +
                                     std::to_string(p.top_k) + "), not " + std::to_string(s->sel.experts_per_token));
    if (s->sel.on_miss != "wait" && s->sel.on_miss != "compressed" && s->sel.on_miss != "skip")
      fail_request("bad_option", "unknown --on-miss '" + s->sel.on_miss + "'; choose wait, compressed, skip");
    s->cmoe = !model->cmoe_bias.empty();
    s->prefetch = params->prefetch != 0;
    int64_t max_cost = 0;
    for (size_t k = 0; k < model->costs.size(); k++)
      if (!model->expert_paths[k].empty()) max_cost = std::max(max_cost, model->costs[k]);
    int64_t min_budget = int64_t(s->sel.experts_per_token) * max_cost;
    if (params->budget_bytes < min_budget)
      fail_request("budget_too_small", "memory budget " + std::to_string(params->budget_bytes) +
                                           " bytes is below the minimum of " + std::to_string(min_budget) +
                                           " bytes (the " + std::to_string(s->sel.experts_per_token) +
                                           " largest experts a layer may need at once)");
    ce_session* raw = s.get();
    s->cache = std::make_unique<Cache>(model->costs, p.n_layers, p.num_experts, params->budget_bytes,
                                       str(params->policy), [raw](Key k) {
                                         int64_t loads = 0, ns = 0;
                                         auto r = raw->m->load_expert(k, loads, ns);
                                         raw->loads += loads;
                                         raw->load_ns += ns;
                                         return r;
                                       });
    const size_t kv = size_t(p.max_seq_len) * p.n_kv_heads * p.head_dim;
    for (int l = 0; l < p.n_layers; l++) {
      s->k_cache.emplace_back(kv * sizeof(float));
      s->v_cache.emplace_back(kv * sizeof(float));
    }
    if (p.sticky_delta != 0.f) s->sticky.assign(p.n_layers, std::vector<float>(p.num_experts, 0.f));
    s->last.assign(p.n_layers, {});
    s->have_last.assign(p.n_layers, false);
    s->outs.resize(5);
    *out = s.release();
  });
}

void ce_session_free(ce_session* s) {
  if (!s) return;
  try {
    s->wait_prefetch();
  } catch (...) {
  }
  s->cache->release_all();
  delete s;
}

void ce_session_reset(ce_session* s) { s->reset(); }

ce_status ce_save_packed_cache(void) {
  return guarded([] { save_packed_cache(); });
}

ce_status ce_session_forward(ce_session* s, const int32_t* ids, int32_t n, int32_t all_logits, float* logits) {
  return guarded([&] {
    try {
      s->forward(ids, n, all_logits != 0, logits);
      s->wait_prefetch();
    } catch (...) {
      try {
        s->wait_prefetch();
      } catch (...) {
      }
      throw;
    }
  });
}

ce_status ce_session_preload(ce_session* s) {
  return guarded([&] {
    std::vector<Key> keys;
    for (size_t k = 0; k < s->m->costs.size(); k++)
      if (!s->m->expert_paths[k].empty()) keys.push_back(Key(k));
    s->cache->fill(keys);
    s->cache->reset_counters();
  });
}

void ce_session_stats(const ce_session* s, ce_stats* o) {
  const Cache& c = *s->cache;
  *o = ce_stats{};
  o->hits = c.hits, o->misses = c.misses, o->evictions = c.evictions, o->prefetch_useful = c.prefetch_useful;
  o->prefetch_issued = s->prefetch_issued;
  o->loads = s->loads, o->load_ns = s->load_ns;
  o->resident_bytes = c.bytes, o->resident_bytes_peak = c.peak_bytes, o->budget_bytes = c.budget;
  o->switch_pairs = s->switch_pairs, o->switched = s->switched;
  o->experts_run = s->counts.experts_run, o->compressed = s->counts.compressed;
  o->misses_compressed = s->counts.misses_compressed, o->misses_skipped = s->counts.misses_skipped;
  o->bias_changed = s->counts.bias_changed;
  o->position = s->pos;
  const auto& packed = s->m->backend.packed;
  o->evicted_pages = packed && packed->drops() ? CE_EVICTED_DROP : CE_EVICTED_KEEP;
}

void ce_session_on_event(ce_session* s, ce_event_fn fn, void* user) {
  s->cache->on_event = fn;
  s->cache->event_user = user;
}

}  // extern "C"
