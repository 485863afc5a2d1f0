/* cosmoe-edge native core: the decode loop of an artifact (manifest.json and the files it names) on
 * ExecuTorch's C++ runtime or onnxruntime's C API, experts loaded lazily from storage into a cache bounded
 * by a byte budget.
 *
 * Four objects, as in the Python engine (cosmoe_edge/runtime), which is the reference this core must match:
 *   ce_model    the artifact opened: backbone programs, embedding rows (mapped), the expert store;
 *   ce_session  one sequence: position, KV cache, per-layer sticky state, its expert dispatch;
 *   dispatch    (inside a session) selection rules, the expert cache and its policy, prefetch;
 *   ce_stats    what happened, which a binding serialises to cosmoe_edge/runtime/report.schema.json.
 * Token ids in, logits out: text stays with the host's tokenizer. The host reads the manifest and fills
 * ce_model_params (Python: cosmoe_edge/runtime/native.py; a JNI binding would fill it from Java's Manifest).
 * Every call that can fail returns a ce_status; ce_last_error() then says why in one line (thread-local). */
#ifndef COSMOE_EDGE_H
#define COSMOE_EDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CE_ABI_VERSION 3

typedef enum {
  CE_OK = 0,
  CE_ERR_ARTIFACT = 1, /* a file is missing, truncated, corrupt or not what the manifest says */
  CE_ERR_REQUEST = 2,  /* the caller asked for what this artifact cannot do (budget, sequence length) */
  CE_ERR_INTERNAL = 3,
} ce_status;

typedef struct ce_model ce_model;
typedef struct ce_session ce_session;
typedef struct ce_dispatch ce_dispatch;

typedef struct {
  const char* path; /* relative to the artifact folder */
  int64_t bytes;    /* its size, always checked */
  const char* sha256; /* hex, checked on first open when ce_model_params.verify_sha */
} ce_file;

typedef struct {
  int32_t layer, expert;
  ce_file file;
  int64_t cost; /* bytes charged against the budget while resident (manifest resident_bytes) */
} ce_expert;

typedef enum { CE_EVICTED_AUTO = 0, CE_EVICTED_KEEP = 1, CE_EVICTED_DROP = 2 } ce_evicted_pages;

/* which of the artifact's programs the model runs: manifest backends.executorch (.pte) or backends.onnx (.onnx) */
typedef enum { CE_BACKEND_EXECUTORCH = 0, CE_BACKEND_ONNX = 1 } ce_backend;

typedef struct {
  const char* artifact;
  ce_backend backend; /* the files below are that backend's */
  /* manifest "model" */
  int32_t n_layers, num_experts, top_k, dim, n_heads, n_kv_heads, head_dim, max_seq_len, vocab_size;
  int32_t router_renorm;
  double rope_theta;
  float sticky_delta;
  /* manifest layer_max_tokens, expert_max_tokens: the most rows one program call takes */
  int32_t layer_max_tokens, expert_max_tokens;
  const float* cmoe_bias;  /* (n_layers, num_experts) when routing.kind is "cmoe", else NULL */
  const float* cmoe_scale; /* idem */
  const float* vectors;    /* compressed experts (n_layers, num_experts, dim), or NULL */
  const float* routers;    /* fp32 routers (n_layers, num_experts, dim) for prefetch, or NULL */
  /* embedding.safetensors: byte offsets of 'weight' (int8 or fp32 rows) and of 'scale' (fp32; -1: none) */
  ce_file embedding;
  int64_t embedding_weight_offset, embedding_scale_offset;
  int32_t embedding_int8;
  const ce_file* layers; /* n_layers backbone programs, method "forward" */
  ce_file head;
  const ce_expert* experts;
  int32_t n_experts;
  int32_t verify_sha; /* sha256 of each file on its first open; else a .pte's header is checked instead */
  int32_t threads;    /* XNNPACK's thread pool, or onnxruntime's (process-wide: the first model's count) */
  const char* packed_cache; /* XNNPACK packed-weights cache file written by edge-prepare, or NULL (ExecuTorch only) */
  /* an evicted expert's packed pages (with packed_cache): kept in the page cache, so a miss on it again reads
   * nothing; or dropped, so that memory as the OS sees it stays within the budget; auto drops them when the
   * packed file is larger than the memory available (MemAvailable, and the memory cgroup's limit) */
  ce_evicted_pages evicted_pages;
} ce_model_params;

typedef struct {
  int64_t budget_bytes;      /* resident experts' bytes */
  const char* policy;        /* nextuse, lru, lfu or none */
  int32_t experts_per_token; /* resolved against the model: 1..top_k */
  const char* on_miss;       /* wait, compressed or skip */
  float skip_below, cache_bias;
  int32_t prefetch; /* guess the next layer's experts with its router and load them on a worker thread */
} ce_session_params;

typedef struct {
  int64_t hits, misses, evictions, prefetch_issued, prefetch_useful;
  int64_t loads, load_ns; /* expert loads and the time they took */
  int64_t resident_bytes, resident_bytes_peak, budget_bytes;
  int64_t switch_pairs, switched; /* consecutive tokens' expert sets, per layer: the switch rate */
  int64_t experts_run, compressed, misses_compressed, misses_skipped, bias_changed;
  int64_t position;
  int32_t evicted_pages; /* the ce_evicted_pages the model resolved to (auto: keep or drop) */
} ce_stats;

/* cache events, in order: the trace tests/conformance/cache.json records */
typedef enum { CE_EVENT_HIT = 0, CE_EVENT_MISS = 1, CE_EVENT_EVICT = 2, CE_EVENT_PREFETCH = 3 } ce_event;
typedef void (*ce_event_fn)(void* user, ce_event kind, int32_t layer, int32_t expert, int64_t resident_bytes);

const char* ce_last_error(void);
const char* ce_last_error_kind(void); /* the Python engine's error kind: corrupt_program, missing_file, ... */
int32_t ce_abi_version(void);

ce_status ce_model_open(const ce_model_params* params, ce_model** out);
void ce_model_free(ce_model* model);

ce_status ce_session_open(ce_model* model, const ce_session_params* params, ce_session** out);
void ce_session_free(ce_session* session); /* releases every resident expert */
void ce_session_reset(ce_session* session);  /* a new sequence at position 0 */
/* Run n ids at the next positions; writes the logits of the last (or, with all_logits, of every) id. */
ce_status ce_session_forward(ce_session* session, const int32_t* ids, int32_t n, int32_t all_logits, float* logits);
/* Write XNNPACK's packed weights of every program loaded with a packed_cache path to that file (edge-prepare). */
ce_status ce_save_packed_cache(void);
/* Load every expert the budget holds (a runtime without lazy loading), then zero the counters. */
ce_status ce_session_preload(ce_session* session);
void ce_session_stats(const ce_session* session, ce_stats* out);
void ce_session_on_event(ce_session* session, ce_event_fn fn, void* user);

/* The parts the conformance vectors replay on their own. */
ce_status ce_dispatch_open(const int64_t* costs, int32_t n_layers, int32_t num_experts, int64_t budget,
                           const char* policy, ce_event_fn fn, void* user, ce_dispatch** out);
/* pinned: n_pinned (layer, expert) pairs that may not be evicted */
ce_status ce_dispatch_get(ce_dispatch* d, int32_t layer, int32_t expert, const int32_t* pinned, int32_t n_pinned);
ce_status ce_dispatch_prefetch(ce_dispatch* d, int32_t layer, int32_t expert, const int32_t* pinned,
                               int32_t n_pinned);
int32_t ce_dispatch_resident(const ce_dispatch* d, int32_t layer, int32_t expert);
void ce_dispatch_stats(const ce_dispatch* d, ce_stats* out);
void ce_dispatch_free(ce_dispatch* d); /* releases what is resident (not counted as evictions) */

typedef struct {
  int32_t experts_per_token;
  const char* on_miss;
  float skip_below, cache_bias;
} ce_selection;

/* Selection of T tokens' experts (runtime/selection.py select). resident (E): needed when on_miss is not
 * wait or cache_bias > 0. sticky_prev (E, in/out) with sticky_delta > 0, else NULL. Writes experts (T,
 * top_k; -1 where it does not run), weights (T, top_k) and, when *has_theta is set, theta (T, dim). */
ce_status ce_select(const float* logits, int32_t T, int32_t E, int32_t top_k, int32_t renorm, const ce_selection* s,
                    const float* vectors, int32_t dim, const uint8_t* resident, float sticky_delta,
                    float* sticky_prev, int32_t* experts, float* weights, float* theta, int32_t* has_theta,
                    ce_stats* counts);
void ce_route_cmoe(const float* scores, int32_t T, int32_t E, int32_t top_k, const float* bias, const float* scale,
                   int32_t* experts, float* weights);
void ce_rope_row(int32_t head_dim, double theta, int32_t pos, float* cos_row, float* sin_row);
void ce_attention_mask(int32_t pos0, int32_t n_new, int32_t rep, float* out); /* (rep*n, max(pos0,1)+n) */
ce_status ce_check_pte_header(const char* path);

#ifdef __cplusplus
}
#endif
#endif
