// cosmoe_edge.runtime._native: a thin nanobind binding over the C API in cosmoe_edge.h. Errors arrive in
// Python as the project's own ArtifactError / RequestError, with the core's one line and kind.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>
#include <vector>

#include "cosmoe_edge.h"

namespace nb = nanobind;
using floats = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;

namespace {

[[noreturn]] void raise(ce_status status) {
  const char* cls = status == CE_ERR_REQUEST ? "RequestError" : "ArtifactError";
  nb::object error = nb::module_::import_("cosmoe_edge.errors").attr(cls);
  nb::object e = error(std::string(ce_last_error()), std::string(ce_last_error_kind()));
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(e.ptr())), e.ptr());
  throw nb::python_error();
}

void check(ce_status status) {
  if (status != CE_OK) raise(status);
}

const float* data_or_null(const std::optional<floats>& a) { return a ? a->data() : nullptr; }

nb::dict stats_dict(const ce_stats& s) {
  nb::dict d;
  d["hits"] = s.hits, d["misses"] = s.misses, d["evictions"] = s.evictions;
  d["prefetch_issued"] = s.prefetch_issued, d["prefetch_useful"] = s.prefetch_useful;
  d["loads"] = s.loads, d["load_ns"] = s.load_ns;
  d["resident_bytes"] = s.resident_bytes, d["resident_bytes_peak"] = s.resident_bytes_peak;
  d["budget_bytes"] = s.budget_bytes, d["switch_pairs"] = s.switch_pairs, d["switched"] = s.switched;
  d["experts_run"] = s.experts_run, d["compressed"] = s.compressed, d["misses_compressed"] = s.misses_compressed;
  d["misses_skipped"] = s.misses_skipped, d["bias_changed"] = s.bias_changed, d["position"] = s.position;
  d["evicted_pages"] = s.evicted_pages == CE_EVICTED_DROP ? "drop" : "keep";
  return d;
}

const char* EVENTS[] = {"hit", "miss", "evict", "prefetch"};

void on_event(void* user, ce_event kind, int32_t layer, int32_t expert, int64_t bytes) {
  nb::gil_scoped_acquire gil;
  nb::handle(static_cast<PyObject*>(user))(EVENTS[kind], layer, expert, bytes);
}

struct File {  // a manifest file entry: (path, bytes, sha256)
  std::string path, sha256;
  int64_t bytes;
  ce_file view() const { return {path.c_str(), bytes, sha256.c_str()}; }
};

File file(const nb::dict& f) {
  return {nb::cast<std::string>(f["path"]), nb::cast<std::string>(f["sha256"]), nb::cast<int64_t>(f["bytes"])};
}

struct Model {
  ce_model* ptr = nullptr;
  ~Model() { ce_model_free(ptr); }
};

struct Session {
  ce_session* ptr = nullptr;
  nb::object model, callback;  // keeps the model alive while the session is
  int vocab = 0;
  ~Session() {
    nb::gil_scoped_release release;
    ce_session_free(ptr);
  }
};

}  // namespace

NB_MODULE(_native, m) {
  m.attr("ABI_VERSION") = ce_abi_version();
  m.attr("EXECUTORCH_VERSION") = CE_EXECUTORCH_VERSION;  // the SDK it was built against: part of a packed cache's key
#ifdef CE_ONNX
  m.attr("HAS_ONNX") = true;  // onnxruntime's C API headers were there at build time (CMakeLists.txt)
#else
  m.attr("HAS_ONNX") = false;
#endif
  m.def("save_packed_cache", [] { check(ce_save_packed_cache()); });

  nb::class_<Model>(m, "Model")
      // config: manifest "model" ints and floats, as named in ce_model_params; files: dicts of the manifest
      .def("__init__", [](Model* self, const std::string& artifact, const std::string& backend, const nb::dict& config,
                          const nb::dict& embedding,
                          int64_t emb_weight_offset, int64_t emb_scale_offset, bool emb_int8,
                          const std::vector<nb::dict>& layers, const nb::dict& head,
                          const std::vector<nb::dict>& experts, std::optional<floats> cmoe_bias,
                          std::optional<floats> cmoe_scale, std::optional<floats> vectors,
                          std::optional<floats> routers, bool verify, int threads, const std::string& packed_cache,
                          const std::string& evicted_pages) {
        new (self) Model();
        auto i = [&](const char* k) { return nb::cast<int32_t>(config[k]); };
        ce_model_params p{};
        p.artifact = artifact.c_str();
        p.backend = backend == "onnx" ? CE_BACKEND_ONNX : CE_BACKEND_EXECUTORCH;
        p.n_layers = i("n_layers"), p.num_experts = i("num_experts"), p.top_k = i("top_k"), p.dim = i("dim");
        p.n_heads = i("n_heads"), p.n_kv_heads = i("n_kv_heads"), p.head_dim = i("head_dim");
        p.max_seq_len = i("max_seq_len"), p.vocab_size = i("vocab_size"), p.router_renorm = i("router_renorm");
        p.layer_max_tokens = i("layer_max_tokens"), p.expert_max_tokens = i("expert_max_tokens");
        p.rope_theta = nb::cast<double>(config["rope_theta"]);
        p.sticky_delta = nb::cast<float>(config["sticky_delta"]);
        p.cmoe_bias = data_or_null(cmoe_bias), p.cmoe_scale = data_or_null(cmoe_scale);
        p.vectors = data_or_null(vectors), p.routers = data_or_null(routers);
        File emb = file(embedding), hd = file(head);
        p.embedding = emb.view();
        p.embedding_weight_offset = emb_weight_offset, p.embedding_scale_offset = emb_scale_offset;
        p.embedding_int8 = emb_int8;
        std::vector<File> layer_files;
        for (const auto& f : layers) layer_files.push_back(file(f));
        std::vector<ce_file> layer_views;
        for (const auto& f : layer_files) layer_views.push_back(f.view());
        p.layers = layer_views.data();
        p.head = hd.view();
        std::vector<File> expert_files;
        std::vector<ce_expert> expert_views;
        for (const auto& e : experts) expert_files.push_back(file(e));
        for (size_t k = 0; k < experts.size(); k++)
          expert_views.push_back({nb::cast<int32_t>(experts[k]["layer"]), nb::cast<int32_t>(experts[k]["expert"]),
                                  expert_files[k].view(), nb::cast<int64_t>(experts[k]["cost"])});
        p.experts = expert_views.data(), p.n_experts = int32_t(expert_views.size());
        p.verify_sha = verify, p.threads = threads;
        p.packed_cache = packed_cache.empty() ? nullptr : packed_cache.c_str();
        p.evicted_pages = evicted_pages == "keep" ? CE_EVICTED_KEEP
                          : evicted_pages == "drop" ? CE_EVICTED_DROP
                                                    : CE_EVICTED_AUTO;
        ce_status st;
        {
          nb::gil_scoped_release release;
          st = ce_model_open(&p, &self->ptr);
        }
        check(st);
      });

  nb::class_<Session>(m, "Session")
      .def("__init__", [](Session* self, nb::object model, int64_t budget, const std::string& policy,
                          int experts_per_token, const std::string& on_miss, float skip_below, float cache_bias,
                          bool prefetch, int vocab) {
        new (self) Session();
        ce_session_params p{budget, policy.c_str(), experts_per_token, on_miss.c_str(), skip_below, cache_bias,
                            prefetch};
        check(ce_session_open(nb::cast<Model&>(model).ptr, &p, &self->ptr));
        self->model = model;
        self->vocab = vocab;
      })
      .def("forward", [](Session& s, const std::vector<int32_t>& ids, bool all_logits) {
        size_t rows = all_logits ? ids.size() : 1;
        float* out = new float[rows * size_t(s.vocab)];
        nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
        ce_status st;
        {
          nb::gil_scoped_release release;
          st = ce_session_forward(s.ptr, ids.data(), int32_t(ids.size()), all_logits, out);
        }
        check(st);
        return nb::ndarray<nb::numpy, float, nb::ndim<2>>(out, {rows, size_t(s.vocab)}, owner);
      }, nb::arg("ids"), nb::arg("all_logits") = false)
      .def("reset", [](Session& s) { ce_session_reset(s.ptr); })
      .def("preload", [](Session& s) {
        ce_status st;
        {
          nb::gil_scoped_release release;
          st = ce_session_preload(s.ptr);
        }
        check(st);
      })
      .def("stats", [](const Session& s) {
        ce_stats st;
        ce_session_stats(s.ptr, &st);
        return stats_dict(st);
      })
      .def("on_event", [](Session& s, nb::object fn) {
        s.callback = fn;
        ce_session_on_event(s.ptr, fn.is_none() ? nullptr : on_event, fn.ptr());
      });

  // the parts the conformance vectors replay
  struct Dispatch {
    ce_dispatch* ptr = nullptr;
    nb::object callback;
    int num_experts = 0;
    ~Dispatch() { ce_dispatch_free(ptr); }
  };
  nb::class_<Dispatch>(m, "Dispatch")
      .def("__init__", [](Dispatch* self, const std::vector<int64_t>& costs, int n_layers, int num_experts,
                          int64_t budget, const std::string& policy, nb::object fn) {
        new (self) Dispatch();
        self->callback = fn;
        self->num_experts = num_experts;
        check(ce_dispatch_open(costs.data(), n_layers, num_experts, budget, policy.c_str(),
                               fn.is_none() ? nullptr : on_event, fn.ptr(), &self->ptr));
      })
      .def("get", [](Dispatch& d, int layer, int expert, const std::vector<int32_t>& pinned) {
        check(ce_dispatch_get(d.ptr, layer, expert, pinned.data(), int32_t(pinned.size() / 2)));
      })
      .def("prefetch", [](Dispatch& d, int layer, int expert, const std::vector<int32_t>& pinned) {
        check(ce_dispatch_prefetch(d.ptr, layer, expert, pinned.data(), int32_t(pinned.size() / 2)));
      })
      .def("is_resident", [](const Dispatch& d, int layer, int expert) {
        return bool(ce_dispatch_resident(d.ptr, layer, expert));
      })
      .def("stats", [](const Dispatch& d) {
        ce_stats st;
        ce_dispatch_stats(d.ptr, &st);
        return stats_dict(st);
      });

  m.def("select", [](floats logits, int top_k, bool renorm, int experts_per_token, const std::string& on_miss,
                     float skip_below, float cache_bias, std::optional<floats> vectors,
                     std::optional<std::vector<uint8_t>> resident, float sticky_delta,
                     std::optional<std::vector<float>> sticky_prev) {
    int T = int(logits.shape(0)), E = int(logits.shape(1));
    int D = vectors ? int(vectors->shape(1)) : 0;
    std::vector<int32_t> experts(size_t(T) * top_k);
    std::vector<float> weights(size_t(T) * top_k), theta(size_t(T) * std::max(D, 1));
    std::vector<uint8_t> res = resident ? *resident : std::vector<uint8_t>(E, 0);
    std::vector<float> prev = sticky_prev ? *sticky_prev : std::vector<float>();
    ce_selection s{experts_per_token, on_miss.c_str(), skip_below, cache_bias};
    int32_t has_theta = 0;
    ce_stats counts;
    check(ce_select(logits.data(), T, E, top_k, renorm, &s, data_or_null(vectors), D, res.data(), sticky_delta,
                    sticky_prev ? prev.data() : nullptr, experts.data(), weights.data(), theta.data(), &has_theta,
                    &counts));
    nb::object th = nb::none();
    if (has_theta) th = nb::cast(theta);
    return nb::make_tuple(experts, weights, th, stats_dict(counts), prev);
  });
  m.def("route_cmoe", [](floats scores, int top_k, floats bias, floats scale) {
    int T = int(scores.shape(0)), E = int(scores.shape(1));
    std::vector<int32_t> experts(size_t(T) * top_k);
    std::vector<float> weights(size_t(T) * top_k);
    ce_route_cmoe(scores.data(), T, E, top_k, bias.data(), scale.data(), experts.data(), weights.data());
    return nb::make_tuple(experts, weights);
  });
  m.def("rope_row", [](int head_dim, double theta, int pos) {
    std::vector<float> c(head_dim), s(head_dim);
    ce_rope_row(head_dim, theta, pos, c.data(), s.data());
    return nb::make_tuple(c, s);
  });
  m.def("attention_mask", [](int pos0, int n, int rep) {
    std::vector<float> out(size_t(rep) * n * (std::max(pos0, 1) + n));
    ce_attention_mask(pos0, n, rep, out.data());
    return out;
  });
  m.def("check_pte_header", [](const std::string& path) { check(ce_check_pte_header(path.c_str())); });
}
