// Which experts run and which stay resident: the routing and selection rules (runtime/routing.py,
// runtime/selection.py), the cache policies (runtime/policies.py) and the expert cache (runtime/cache.py),
// decision for decision, so that tests/conformance replays through both give the same traces.
#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core.h"

namespace ce {

// ---------------- routing ----------------

float numpy_sum(const float* a, int n) {
  // numpy's pairwise summation of float32 (accumulating in float32): 8 accumulators up to 128 values
  if (n < 8) {
    float res = 0.f;
    for (int i = 0; i < n; i++) res += a[i];
    return res;
  }
  if (n <= 128) {
    float r[8];
    for (int j = 0; j < 8; j++) r[j] = a[j];
    int i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; j++) r[j] += a[i + j];
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[i];
    return res;
  }
  int n2 = n / 2;
  n2 -= n2 % 8;
  return numpy_sum(a, n2) + numpy_sum(a + n2, n - n2);
}

void softmax_row(const float* x, int n, float* out) {
  float m = x[0];
  for (int i = 1; i < n; i++) m = std::max(m, x[i]);
  for (int i = 0; i < n; i++) out[i] = std::exp(x[i] - m);
  float s = 0.f + numpy_sum(out, n);
  for (int i = 0; i < n; i++) out[i] = out[i] / s;
}

// the top_k indices of `score`, descending, ties to the lower index (numpy's stable argsort of -score)
static void top_k_of(const float* score, int E, int top_k, int32_t* out) {
  std::vector<int32_t> idx(E);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return -score[a] < -score[b]; });
  std::copy(idx.begin(), idx.begin() + top_k, out);
}

static void renormalise(float* w, int k) {
  float s = 0.f + numpy_sum(w, k);
  for (int j = 0; j < k; j++) w[j] = w[j] / s;
}

void route_row(const float* logits, int E, int top_k, bool renorm, int32_t* experts, float* weights) {
  std::vector<float> p(E);
  softmax_row(logits, E, p.data());
  top_k_of(p.data(), E, top_k, experts);
  for (int j = 0; j < top_k; j++) weights[j] = p[experts[j]];
  if (renorm) renormalise(weights, top_k);
}

void route_cmoe(const float* scores, int T, int E, int top_k, const float* bias, const float* scale, int32_t* experts,
                float* weights) {
  std::vector<float> p(E), biased(E);
  for (int t = 0; t < T; t++) {
    softmax_row(scores + size_t(t) * E, E, p.data());
    for (int e = 0; e < E; e++) biased[e] = p[e] + bias[e];
    top_k_of(biased.data(), E, top_k, experts + size_t(t) * top_k);
    for (int j = 0; j < top_k; j++) {
      int e = experts[size_t(t) * top_k + j];
      weights[size_t(t) * top_k + j] = 1.f + p[e] * scale[e];
    }
  }
}

bool select(const float* logits, int T, int E, int top_k, bool renorm, const Selection& s, const float* vectors, int D,
            const uint8_t* resident, float sticky_delta, float* sticky_prev, int32_t* experts, float* weights,
            float* theta, Counts& counts) {
  const int k = s.experts_per_token;
  const bool plain_wait = k == top_k && s.on_miss == "wait";
  const bool sticky = sticky_prev != nullptr;
  std::vector<float> z(E), zb(E), w(top_k);
  std::vector<int32_t> plain(top_k);
  if (s.cache_bias != 0.f || sticky) {
    for (int t = 0; t < T; t++) {
      const float* row = logits + size_t(t) * E;
      int32_t* ex = experts + size_t(t) * top_k;
      for (int e = 0; e < E; e++) z[e] = sticky ? row[e] + sticky_delta * sticky_prev[e] : row[e];
      if (s.cache_bias != 0.f) {
        for (int e = 0; e < E; e++) zb[e] = z[e] + s.cache_bias * float(resident[e] ? 1 : 0);
        route_row(zb.data(), E, top_k, renorm, ex, w.data());
        route_row(z.data(), E, top_k, renorm, plain.data(), w.data());
        std::vector<int32_t> a(ex, ex + top_k), b(plain);
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        counts.bias_changed += a != b;
      } else {
        route_row(z.data(), E, top_k, renorm, ex, w.data());
      }
      if (sticky) {
        std::fill(sticky_prev, sticky_prev + E, 0.f);
        for (int j = 0; j < top_k; j++) sticky_prev[ex[j]] = 1.f;
      }
    }
  } else {
    for (int t = 0; t < T; t++)
      route_row(logits + size_t(t) * E, E, top_k, renorm, experts + size_t(t) * top_k, weights + size_t(t) * top_k);
    if (plain_wait) {
      counts.experts_run += int64_t(T) * top_k;
      return false;
    }
  }
  // p: the unbiased probabilities of the chosen experts
  std::vector<float> probs(E), p(size_t(T) * top_k);
  for (int t = 0; t < T; t++) {
    softmax_row(logits + size_t(t) * E, E, probs.data());
    for (int j = 0; j < top_k; j++) p[size_t(t) * top_k + j] = probs[experts[size_t(t) * top_k + j]];
  }
  if (plain_wait) {  // only the choice was biased
    counts.experts_run += int64_t(T) * top_k;
    for (size_t i = 0; i < p.size(); i++) weights[i] = p[i];
    if (renorm)
      for (int t = 0; t < T; t++) renormalise(weights + size_t(t) * top_k, top_k);
    return false;
  }
  bool any_aux = false;
  for (int t = 0; t < T; t++) {
    int32_t* ex = experts + size_t(t) * top_k;
    const float* pt = p.data() + size_t(t) * top_k;
    std::vector<uint8_t> runs(top_k), aux(top_k), miss(top_k, 0);
    for (int j = 0; j < top_k; j++) {
      runs[j] = j < k;
      aux[j] = vectors != nullptr && !runs[j];
    }
    if (s.on_miss != "wait") {
      for (int j = 1; j < top_k; j++) miss[j] = runs[j] && !resident[ex[j]];  // the first-ranked always runs
      if (s.on_miss == "skip") {
        for (int j = 0; j < top_k; j++) w[j] = runs[j] ? pt[j] : 0.f;
        if (renorm) renormalise(w.data(), top_k);
        for (int j = 0; j < top_k; j++) {
          miss[j] = miss[j] && w[j] < s.skip_below;
          counts.misses_skipped += miss[j];
        }
      } else {
        for (int j = 0; j < top_k; j++) {
          aux[j] = aux[j] || miss[j];
          counts.misses_compressed += miss[j];
        }
      }
      for (int j = 0; j < top_k; j++) runs[j] = runs[j] && !miss[j];
    }
    float* wt = weights + size_t(t) * top_k;
    for (int j = 0; j < top_k; j++) wt[j] = runs[j] ? pt[j] : 0.f;
    if (renorm) renormalise(wt, top_k);
    float total_in[64];
    int n_aux = 0;
    for (int j = 0; j < top_k; j++) {
      counts.experts_run += runs[j];
      n_aux += aux[j];
      total_in[j] = aux[j] ? pt[j] : 0.f;
    }
    if (n_aux) {
      any_aux = true;
      counts.compressed += n_aux;
    }
    if (vectors != nullptr) {  // theta rows (kept for every token; all ones where nothing stands in)
      float total = 0.f + numpy_sum(total_in, top_k);
      float* th = theta + size_t(t) * D;
      if (total > 0) {
        for (int d = 0; d < D; d++) {
          float acc = 0.f;
          for (int j = 0; j < top_k; j++) acc += (total_in[j] / total) * vectors[size_t(ex[j]) * D + d];
          th[d] = acc;
        }
      } else {
        std::fill(th, th + D, 1.f);
      }
    }
    for (int j = 0; j < top_k; j++)
      if (!runs[j]) ex[j] = -1;
  }
  return any_aux;
}

// ---------------- RoPE rows and the attention mask (runtime/kv.py) ----------------

void rope_row(int head_dim, double theta, int pos, float* cos_row, float* sin_row) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; i++) {
    double inv_freq = 1.0 / std::pow(theta, double(2 * i) / double(head_dim));
    double angle = double(pos) * inv_freq;
    cos_row[i] = cos_row[i + half] = float(std::cos(angle));
    sin_row[i] = sin_row[i + half] = float(std::sin(angle));
  }
}

void attention_mask(int pos0, int n_new, int rep, float* out) {
  const int past = std::max(pos0, 1), cols = past + n_new;
  const float inf = INFINITY;
  for (int r = 0; r < rep; r++)
    for (int t = 0; t < n_new; t++) {
      float* row = out + (size_t(r) * n_new + t) * cols;
      for (int c = 0; c < past; c++) row[c] = c < pos0 ? 0.f : -inf;
      for (int c = 0; c < n_new; c++) row[past + c] = c <= t ? 0.f : -inf;
    }
}

// ---------------- cache policies ----------------

void Policy::touch(Key k) {
  forget(k);
  order_.push_back(k);
  where_[k] = std::prev(order_.end());
}

void Policy::arrived(Key k) {
  if (where_.count(k)) return;
  order_.push_back(k);
  where_[k] = std::prev(order_.end());
}

void Policy::forget(Key k) {
  auto it = where_.find(k);
  if (it == where_.end()) return;
  order_.erase(it->second);
  where_.erase(it);
}

int Policy::rank(Key k) const {
  int i = 0;
  for (Key o : order_) {
    if (o == k) return i;
    i++;
  }
  return -1;
}

namespace {

struct LRU : Policy {
  using Policy::Policy;
  Key victim(const std::vector<Key>& candidates) override {
    for (Key k : order_)
      if (std::find(candidates.begin(), candidates.end(), k) != candidates.end()) return k;
    return candidates.front();
  }
};

struct NoCache : LRU {
  using LRU::LRU;
  bool keeps() const override { return false; }
};

struct LFU : Policy {
  using Policy::Policy;
  std::unordered_map<Key, int64_t> uses;
  void touch(Key k) override {
    Policy::touch(k);
    uses[k]++;
  }
  Key victim(const std::vector<Key>& candidates) override {
    Key best = candidates.front();
    auto score = [&](Key k) {
      auto u = uses.find(k);
      return std::make_pair(u == uses.end() ? int64_t(0) : u->second, rank(k));
    };
    auto best_score = score(best);
    for (Key k : candidates) {
      auto sc = score(k);
      if (sc < best_score) best = k, best_score = sc;
    }
    return best;
  }
};

// policies.py NextUse: Belady's rule with each expert's next use estimated from the layer cycle
struct NextUse : Policy {
  NextUse(int n_layers, int num_experts) : Policy(n_layers, num_experts), last(size_t(n_layers) * num_experts, -1) {}
  int layer = -1;
  std::vector<uint8_t> chosen_now;  // experts of `layer` asked for at this visit
  std::vector<int8_t> last;         // per key: chosen at its layer's last finished visit (-1: no visit yet)
  std::map<std::pair<Key, bool>, std::pair<int64_t, int64_t>> counts;  // (key, state) -> (chosen, visits)

  static std::pair<int64_t, int64_t> prior(bool state) { return state ? std::make_pair(2, 3) : std::make_pair(1, 4); }
  bool chosen(Key k) const { return k / num_experts_ == layer && chosen_now[k % num_experts_]; }

  void request(Key k) override {
    if (k / num_experts_ != layer) {
      end_visit();
      layer = k / num_experts_;
      chosen_now.assign(num_experts_, 0);
    }
    chosen_now[k % num_experts_] = 1;
  }
  void end_visit() {
    if (layer < 0) return;
    for (int e = 0; e < num_experts_; e++) {
      Key k = layer * num_experts_ + e;
      bool now = chosen_now[e];
      if (last[k] >= 0) {
        auto it = counts.find({k, last[k] == 1});
        if (it == counts.end()) it = counts.emplace(std::make_pair(k, last[k] == 1), prior(last[k] == 1)).first;
        it->second.first += now;
        it->second.second += 1;
      }
      last[k] = now;
    }
  }
  std::pair<int64_t, int64_t> wait(Key k) const {
    const int L = n_layers_, kl = k / num_experts_;
    int64_t d;
    bool state;
    if (kl == layer) {
      d = L, state = chosen(k);
    } else {
      d = ((kl - layer) % L + L) % L, state = last[k] == 1;
    }
    auto it = counts.find({k, state});
    auto [a, b] = it == counts.end() ? prior(state) : it->second;
    return {d * a + L * (b - a), a};
  }
  Key victim(const std::vector<Key>& candidates) override {
    Key best = -1;
    std::pair<int64_t, int64_t> bw{0, 1};
    for (Key k : candidates) {
      auto w = wait(k);
      if (best < 0) {
        best = k, bw = w;
        continue;
      }
      int64_t lhs = w.first * bw.second, rhs = bw.first * w.second;
      if (lhs > rhs || (lhs == rhs && rank(k) < rank(best))) best = k, bw = w;
    }
    return best;
  }
};

}  // namespace

std::unique_ptr<Policy> make_policy(const std::string& name, int n_layers, int num_experts) {
  if (name == "nextuse") return std::make_unique<NextUse>(n_layers, num_experts);
  if (name == "lru") return std::make_unique<LRU>(n_layers, num_experts);
  if (name == "lfu") return std::make_unique<LFU>(n_layers, num_experts);
  if (name == "none") return std::make_unique<NoCache>(n_layers, num_experts);
  fail_request("unknown_policy", "unknown --cache-policy '" + name + "'; choose nextuse, lru, lfu, none");
}

// ---------------- the expert cache ----------------

static std::string with_commas(int64_t n) {
  std::string s = std::to_string(n), out;
  int count = 0;
  for (auto it = s.rbegin(); it != s.rend(); ++it) {
    if (count && count % 3 == 0 && *it != '-') out.push_back(',');
    out.push_back(*it);
    count++;
  }
  return std::string(out.rbegin(), out.rend());
}

Cache::Cache(std::vector<int64_t> costs, int n_layers, int num_experts, int64_t budget_, const std::string& policy,
             Loader load)
    : budget(budget_), costs_(std::move(costs)), num_experts_(num_experts),
      policy_(make_policy(policy, n_layers, num_experts)), load_(std::move(load)),
      prefetched_(costs_.size(), false) {}

void Cache::event(ce_event kind, Key k) {
  if (on_event) on_event(event_user, kind, k / num_experts_, k % num_experts_, bytes);
}

bool Cache::is_resident(Key k) {
  std::lock_guard<std::mutex> g(mu_);
  return resident_.count(k) != 0;
}

Resident* Cache::get(Key k, const std::vector<Key>& pinned) {
  std::shared_future<void> pending;
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = loading_done_.find(k);
    if (it != loading_done_.end()) pending = it->second;
    policy_->request(k);
  }
  if (pending.valid()) pending.wait();
  std::lock_guard<std::mutex> g(mu_);
  if (!policy_->keeps())
    for (Key o : std::vector<Key>(order_)) evict(o);
  auto it = resident_.find(k);
  if (it != resident_.end()) {
    hits++;
    if (prefetched_[k]) {
      prefetched_[k] = false;
      prefetch_useful++;
    }
    policy_->touch(k);
    event(CE_EVENT_HIT, k);
    return it->second.get();
  }
  misses++;
  event(CE_EVENT_MISS, k);
  make_room(costs_[k], pinned);
  auto r = load_(k);
  Resident* out = r.get();
  insert(k, std::move(r));
  policy_->touch(k);
  return out;
}

bool Cache::prefetch(Key k, const std::vector<Key>& pinned) {
  int64_t c = costs_[k];
  std::shared_ptr<std::promise<void>> done;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (resident_.count(k) || loading_.count(k)) return false;
    int64_t evictable = 0;
    for (Key o : order_)
      if (std::find(pinned.begin(), pinned.end(), o) == pinned.end()) evictable += costs_[o];
    if (bytes - evictable + c > budget) return false;
    make_room(c, pinned);
    bytes += c;  // reserved now, so concurrent misses see it
    done = std::make_shared<std::promise<void>>();
    loading_[k] = done;
    loading_done_[k] = done->get_future().share();
  }
  std::unique_ptr<Resident> r;
  try {
    r = load_(k);
  } catch (...) {
    std::lock_guard<std::mutex> g(mu_);
    bytes -= c;
    loading_.erase(k);
    loading_done_.erase(k);
    done->set_value();
    throw;
  }
  std::lock_guard<std::mutex> g(mu_);
  bytes -= c;
  insert(k, std::move(r));
  policy_->arrived(k);
  prefetched_[k] = true;
  event(CE_EVENT_PREFETCH, k);
  loading_.erase(k);
  loading_done_.erase(k);
  done->set_value();
  return true;
}

int Cache::fill(const std::vector<Key>& keys) {
  int n = 0;
  for (Key k : keys) {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (bytes + costs_[k] > budget) break;
    }
    get(k, {});
    n++;
  }
  return n;
}

void Cache::reset_counters() {
  std::lock_guard<std::mutex> g(mu_);
  hits = misses = evictions = prefetch_useful = 0;
  peak_bytes = bytes;
}

void Cache::release_all() {
  std::lock_guard<std::mutex> g(mu_);
  for (Key k : order_) policy_->forget(k);
  resident_.clear();
  order_.clear();
  std::fill(prefetched_.begin(), prefetched_.end(), false);
  bytes = 0;
  malloc_trim(0);
}

void Cache::make_room(int64_t c, const std::vector<Key>& pinned) {
  while (bytes + c > budget) {
    std::vector<Key> candidates;
    for (Key o : order_)
      if (std::find(pinned.begin(), pinned.end(), o) == pinned.end()) candidates.push_back(o);
    if (candidates.empty())
      fail_request("budget_too_small",
                   "memory budget of " + with_commas(budget) + " bytes cannot hold the experts one layer needs");
    evict(policy_->victim(candidates));
  }
}

void Cache::insert(Key k, std::unique_ptr<Resident> r) {
  resident_[k] = std::move(r);
  order_.push_back(k);
  bytes += costs_[k];
  if (bytes > budget)
    throw Failure{CE_ERR_INTERNAL, "internal", "resident experts (" + with_commas(bytes) + " bytes) exceed the budget (" +
                                                   with_commas(budget) + ")"};
  peak_bytes = std::max(peak_bytes, bytes);
}

void Cache::evict(Key k) {
  resident_.erase(k);  // releases its program
  order_.erase(std::find(order_.begin(), order_.end(), k));
  bytes -= costs_[k];
  policy_->forget(k);
  prefetched_[k] = false;
  evictions++;
  event(CE_EVENT_EVICT, k);
  malloc_trim(0);  // freed heap back to the OS, so the budget holds for RSS
}

}  // namespace ce
