// The C API of the parts the conformance vectors replay on their own: the cache over costs alone (what
// it loads records nothing), selection, CMoE routing, RoPE rows, the mask, the .pte header check.
#include "core.h"

using namespace ce;

struct ce_dispatch {
  std::unique_ptr<Cache> cache;
  int num_experts;
};

namespace {
std::vector<Key> pins(const int32_t* pinned, int32_t n, int num_experts) {
  std::vector<Key> out;
  for (int i = 0; i < n; i++) out.push_back(pinned[2 * i] * num_experts + pinned[2 * i + 1]);
  return out;
}
}  // namespace

extern "C" {

ce_status ce_dispatch_open(const int64_t* costs, int32_t n_layers, int32_t num_experts, int64_t budget,
                           const char* policy, ce_event_fn fn, void* user, ce_dispatch** out) {
  *out = nullptr;
  return guarded([&] {
    auto d = std::make_unique<ce_dispatch>();
    d->num_experts = num_experts;
    d->cache = std::make_unique<Cache>(std::vector<int64_t>(costs, costs + size_t(n_layers) * num_experts), n_layers,
                                       num_experts, budget, policy ? policy : "",
                                       [](Key) { return std::make_unique<Resident>(); });
    d->cache->on_event = fn;
    d->cache->event_user = user;
    *out = d.release();
  });
}

ce_status ce_dispatch_get(ce_dispatch* d, int32_t layer, int32_t expert, const int32_t* pinned, int32_t n_pinned) {
  return guarded([&] { d->cache->get(layer * d->num_experts + expert, pins(pinned, n_pinned, d->num_experts)); });
}

ce_status ce_dispatch_prefetch(ce_dispatch* d, int32_t layer, int32_t expert, const int32_t* pinned,
                               int32_t n_pinned) {
  return guarded(
      [&] { d->cache->prefetch(layer * d->num_experts + expert, pins(pinned, n_pinned, d->num_experts)); });
}

int32_t ce_dispatch_resident(const ce_dispatch* d, int32_t layer, int32_t expert) {
  return d->cache->is_resident(layer * d->num_experts + expert);
}

void ce_dispatch_stats(const ce_dispatch* d, ce_stats* o) {
  *o = ce_stats{};
  const Cache& c = *d->cache;
  o->hits = c.hits, o->misses = c.misses, o->evictions = c.evictions, o->prefetch_useful = c.prefetch_useful;
  o->resident_bytes = c.bytes, o->resident_bytes_peak = c.peak_bytes, o->budget_bytes = c.budget;
}

void ce_dispatch_free(ce_dispatch* d) {
  if (d) d->cache->release_all();
  delete d;
}

ce_status ce_select(const float* logits, int32_t T, int32_t E, int32_t top_k, int32_t renorm, const ce_selection* s,
                    const float* vectors, int32_t dim, const uint8_t* resident, float sticky_delta,
                    float* sticky_prev, int32_t* experts, float* weights, float* theta, int32_t* has_theta,
                    ce_stats* counts) {
  return guarded([&] {
    Selection sel{s->experts_per_token, s->on_miss ? s->on_miss : "wait", s->skip_below, s->cache_bias};
    Counts c;
    *has_theta = select(logits, T, E, top_k, renorm != 0, sel, vectors, dim, resident, sticky_delta, sticky_prev,
                        experts, weights, theta, c);
    *counts = ce_stats{};
    counts->experts_run = c.experts_run, counts->compressed = c.compressed;
    counts->misses_compressed = c.misses_compressed, counts->misses_skipped = c.misses_skipped;
    counts->bias_changed = c.bias_changed;
  });
}

void ce_route_cmoe(const float* scores, int32_t T, int32_t E, int32_t top_k, const float* bias, const float* scale,
                   int32_t* experts, float* weights) {
  route_cmoe(scores, T, E, top_k, bias, scale, experts, weights);
}

void ce_rope_row(int32_t head_dim, double theta, int32_t pos, float* cos_row, float* sin_row) {
  rope_row(head_dim, theta, pos, cos_row, sin_row);
}

void ce_attention_mask(int32_t pos0, int32_t n_new, int32_t rep, float* out) { attention_mask(pos0, n_new, rep, out); }

ce_status ce_check_pte_header(const char* path) {
  return guarded([&] { check_pte_header(path); });
}

}  // extern "C"
