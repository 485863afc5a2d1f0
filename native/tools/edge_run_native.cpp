// edge-run-native: a host of the native core with no Python in the process, as an app on a device would be
// (the way llama.cpp's llama-completion hosts libllama). It reads the artifact's manifest.json (the same file
// the Python engine and Android's Manifest.java read), fills ce_model_params, generates from prompt token ids
// and prints one JSON object: the new ids, the timings, the process's peak RSS and bytes read, the cache's
// counters. Text stays with the tokenizer: `edge-run` tokenizes, this takes ids (edge-bench passes them).
//
// Greedy decoding gives the Python engine's tokens exactly (tests/test_native.py). With --temperature it
// samples with its own generator (std::mt19937_64), not numpy's stream: the same distribution, other draws.
#include <cosmoe_edge.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

using json = nlohmann::json;

namespace {

constexpr int kFormatVersion = 2;  // cosmoe_edge/runtime/manifest.py FORMAT_VERSION

struct Usage : std::runtime_error {  // bad input: one line, exit code 2
  using std::runtime_error::runtime_error;
};

const char* kHelp =
    "usage: edge-run-native ARTIFACT --ids 1,2,3 [options]\n"
    "Generate from prompt token ids with the native core, no Python in the process.\n"
    "Prints one JSON object: ids, timings, peak RSS, bytes read, cache counters.\n"
    "  --ids LIST             comma-separated prompt token ids (edge-run tokenizes text)\n"
    "  --max-new-tokens N     tokens to generate (default 128; stops early at the tokenizer's eos)\n"
    "  --memory-budget B      all (default), a byte count, or P% of all experts' bytes\n"
    "  --cache-policy P       nextuse (default), lru, lfu or none\n"
    "  --backend B            executorch (default) or onnx: which of the artifact's programs run\n"
    "  --threads N            XNNPACK's thread pool, or onnxruntime's (default 1)\n"
    "  --preload              load every expert the budget holds before the prompt\n"
    "  --prefetch             guess the next layer's experts and load them on a worker thread\n"
    "  --experts-per-token K  --on-miss wait|compressed|skip  --skip-below W  --cache-bias D\n"
    "  --packed-cache FILE    XNNPACK's packed weights written by edge-prepare\n"
    "  --evicted-pages M      auto (default), keep or drop: an evicted expert's packed pages stay in the page\n"
    "                         cache (a miss on it again reads nothing) or leave it (memory as the OS sees it\n"
    "                         stays within the budget); auto drops when the packed file exceeds free memory\n"
    "  --no-verify            check sizes and program headers, not each file's sha256\n"
    "  --temperature T        0 (default): greedy, the Python engine's tokens; > 0: sampled (--seed S)\n";

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Usage("cannot read " + path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// One safetensors file's header: {name: dtype, shape, data_offsets}; arrays are read on request (the embedding's
// rows are mapped by the core, so only its offsets are needed here).
struct Safetensors {
  std::string path;
  json header;
  uint64_t data = 0, size = 0;

  explicit Safetensors(std::string file) : path(std::move(file)) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw Usage("cannot read " + path);
    size = uint64_t(f.tellg());
    uint64_t n = 0;
    if (size < 8 || !f.seekg(0).read(reinterpret_cast<char*>(&n), 8))
      throw Usage(path + " is not a valid safetensors file (too short)");
    if (n > size - 8) throw Usage(path + " is not a valid safetensors file (header past the end)");
    std::string text(n, '\0');
    f.read(text.data(), std::streamsize(n));
    header = json::parse(text, nullptr, false);
    if (!f || header.is_discarded() || !header.is_object()) throw Usage(path + " is not a valid safetensors file");
    data = 8 + n;
  }
  int64_t offset(const std::string& name) const {
    if (!header.contains(name)) return -1;
    return int64_t(data) + header[name]["data_offsets"][0].get<int64_t>();
  }
  // fp32 array `name` with `count` values appended to out
  void f32(const std::string& name, size_t count, std::vector<float>& out) const {
    if (!header.contains(name) || header[name]["dtype"] != "F32")
      throw Usage(path + " has no fp32 '" + name + "'");
    auto o = header[name]["data_offsets"];
    uint64_t start = data + o[0].get<uint64_t>(), end = data + o[1].get<uint64_t>();
    if (end - start != count * 4 || end > size) throw Usage(path + ": '" + name + "' does not fit the file");
    size_t at = out.size();
    out.resize(at + count);
    std::ifstream f(path, std::ios::binary);
    if (!f.seekg(std::streamoff(start)).read(reinterpret_cast<char*>(out.data() + at), std::streamsize(count * 4)))
      throw Usage("cannot read " + path);
  }
};

ce_file file_of(const json& e) {
  // the strings live in the manifest json, which outlives the model
  return ce_file{e.at("path").get_ref<const std::string&>().c_str(), e.at("bytes").get<int64_t>(),
                 e.at("sha256").get_ref<const std::string&>().c_str()};
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream s(text);
  std::string part;
  while (std::getline(s, part, ',')) {
    char* end = nullptr;
    long v = std::strtol(part.c_str(), &end, 10);
    if (part.empty() || *end != '\0' || v < 0 || v > INT32_MAX) throw Usage("--ids takes token ids like 1,2,3, not " + text);
    ids.push_back(int32_t(v));
  }
  if (ids.empty()) throw Usage("--ids is empty");
  return ids;
}

int64_t proc_value(const char* file, const char* key) {  // VmHWM (kB) or read_bytes, as the OS counts them
  std::ifstream f(file);
  std::string line;
  size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::atoll(line.c_str() + n);
  return 0;
}

struct Options {
  std::string artifact, ids, budget = "all", policy = "nextuse", on_miss = "wait", packed_cache, evicted = "auto";
  std::string backend = "executorch";
  int max_new_tokens = 128, threads = 1, experts_per_token = 0;
  bool preload = false, prefetch = false, verify = true;
  float skip_below = 0.5f, cache_bias = 0.0f, temperature = 0.0f;
  uint64_t seed = 0;
};

Options parse_args(int argc, char** argv) {
  Options o;
  auto value = [&](int& i) -> std::string {
    if (i + 1 >= argc) throw Usage(std::string(argv[i]) + " needs a value");
    return argv[++i];
  };
  auto number = [](const std::string& flag, const std::string& v) {
    char* end = nullptr;
    double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !std::isfinite(d)) throw Usage(flag + " takes a number, not " + v);
    return d;
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      std::exit(0);
    } else if (a == "--ids") o.ids = value(i);
    else if (a == "--max-new-tokens") o.max_new_tokens = int(number(a, value(i)));
    else if (a == "--memory-budget") o.budget = value(i);
    else if (a == "--cache-policy") o.policy = value(i);
    else if (a == "--threads") o.threads = int(number(a, value(i)));
    else if (a == "--experts-per-token") o.experts_per_token = int(number(a, value(i)));
    else if (a == "--on-miss") o.on_miss = value(i);
    else if (a == "--skip-below") o.skip_below = float(number(a, value(i)));
    else if (a == "--cache-bias") o.cache_bias = float(number(a, value(i)));
    else if (a == "--packed-cache") o.packed_cache = value(i);
    else if (a == "--backend") o.backend = value(i);
    else if (a == "--evicted-pages") o.evicted = value(i);
    else if (a == "--temperature") o.temperature = float(number(a, value(i)));
    else if (a == "--seed") o.seed = uint64_t(number(a, value(i)));
    else if (a == "--preload") o.preload = true;
    else if (a == "--prefetch") o.prefetch = true;
    else if (a == "--no-verify") o.verify = false;
    else if (a.rfind("--", 0) == 0) throw Usage("unknown option " + a + " (see --help)");
    else if (o.artifact.empty()) o.artifact = a;
    else throw Usage("one ARTIFACT only (see --help)");
  }
  if (o.artifact.empty() || o.ids.empty()) throw Usage("pass ARTIFACT and --ids (see --help)");
  if (o.max_new_tokens < 1 || o.threads < 1) throw Usage("--max-new-tokens and --threads must be at least 1");
  if (o.temperature < 0) throw Usage("--temperature must be >= 0");
  if (o.backend != "executorch" && o.backend != "onnx")
    throw Usage("--backend takes executorch or onnx, not " + o.backend);
  if (o.evicted != "auto" && o.evicted != "keep" && o.evicted != "drop")
    throw Usage("--evicted-pages takes auto, keep or drop, not " + o.evicted);
  return o;
}

json load_manifest(const std::string& artifact, const std::string& backend) {
  std::string path = artifact + "/manifest.json";
  json m = json::parse(read_text(path), nullptr, false);
  if (m.is_discarded() || !m.is_object()) throw Usage(path + " is not valid JSON");
  if (!m.contains("format_version") || !m["format_version"].is_number_integer() || m["format_version"] != kFormatVersion)
    throw Usage(path + " has format_version " + (m.contains("format_version") ? m["format_version"].dump() : "None") +
                "; this runtime reads version " + std::to_string(kFormatVersion) +
                " (re-export the model with this version of edge-export)");
  for (const char* key : {"model", "tokenizer", "embedding", "quant", "backends", "layer_max_tokens", "expert_max_tokens"})
    if (!m.contains(key)) throw Usage(path + " lacks '" + key + "'");
  if (!m["backends"].contains(backend)) throw Usage("this artifact has no " + backend + " programs");
  if (m.contains("peer")) throw Usage("the native engine does not run PEER layers yet; use edge-run --engine python");
  return m;
}

int64_t budget_bytes(const std::string& text, int64_t total) {
  if (text == "all") return total;
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() && std::string(end) == "%" && v >= 0) return int64_t(v / 100 * double(total));
  if (end != text.c_str() && *end == '\0' && v >= 0) return int64_t(v);
  throw Usage("cannot read --memory-budget " + text + ": use all, a byte count, or a percentage like 25%");
}

int32_t sample(const std::vector<float>& logits, float temperature, std::mt19937_64& rng) {
  if (temperature <= 0) return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  double top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  for (size_t i = 0; i < p.size(); ++i) p[i] = std::exp((logits[i] - top) / temperature);
  return int32_t(std::discrete_distribution<size_t>(p.begin(), p.end())(rng));
}

void check(ce_status s) {
  if (s != CE_OK) throw std::runtime_error(ce_last_error());
}

int run(const Options& o) {
  json m = load_manifest(o.artifact, o.backend);
  const json& cfg = m["model"];
  const json& section = m["backends"][o.backend];
  if (section.value("expert_form", "program") != "program")
    throw Usage("the native engine runs expert programs, not the weights form");
  auto i32 = [&](const char* k) { return cfg.at(k).get<int32_t>(); };
  ce_model_params p{};
  p.artifact = o.artifact.c_str();
  p.backend = o.backend == "onnx" ? CE_BACKEND_ONNX : CE_BACKEND_EXECUTORCH;
  p.n_layers = i32("n_layers"), p.num_experts = i32("num_experts"), p.top_k = i32("top_k"), p.dim = i32("dim");
  p.n_heads = i32("n_heads"), p.n_kv_heads = i32("n_kv_heads"), p.head_dim = i32("head_dim");
  p.max_seq_len = i32("max_seq_len"), p.vocab_size = i32("vocab_size");
  p.router_renorm = cfg.value("router_renorm", true) ? 1 : 0;
  p.rope_theta = cfg.at("rope_theta").get<double>();
  p.sticky_delta = cfg.value("sticky_delta", 0.0f);
  p.layer_max_tokens = m["layer_max_tokens"].get<int32_t>(), p.expert_max_tokens = m["expert_max_tokens"].get<int32_t>();

  json routing = m.value("routing", json{{"kind", "softmax"}});
  bool cmoe = routing["kind"] == "cmoe";
  std::vector<float> cmoe_bias, cmoe_scale, vectors, routers;
  if (cmoe) {
    for (auto& row : routing.at("selection_bias")) for (float v : row) cmoe_bias.push_back(v);
    for (auto& row : routing.at("weight_scale")) for (float v : row) cmoe_scale.push_back(v);
    p.cmoe_bias = cmoe_bias.data(), p.cmoe_scale = cmoe_scale.data();
    if (o.prefetch) throw Usage("prefetch guesses with a linear router; this model's router is CMoE's (edge-carve)");
  }
  size_t per_layer = size_t(p.num_experts) * size_t(p.dim);
  auto stacked = [&](const json& entry, std::vector<float>& out) {
    std::string path = o.artifact + "/" + entry.at("path").get<std::string>();
    Safetensors st(path);
    for (int l = 0; l < p.n_layers; ++l) st.f32("layer_" + std::to_string(l), per_layer, out);
  };
  if (m.contains("compressed_experts")) stacked(m["compressed_experts"], vectors), p.vectors = vectors.data();
  if (o.prefetch) stacked(m.at("routers"), routers), p.routers = routers.data();

  const json& emb = m["embedding"];
  {
    std::string path = o.artifact + "/" + emb.at("path").get<std::string>();
    Safetensors st(path);
    if (!st.header.contains("weight")) throw Usage(path + " has no 'weight'");
    p.embedding_weight_offset = st.offset("weight"), p.embedding_scale_offset = st.offset("scale");
    p.embedding_int8 = st.header["weight"]["dtype"] == "I8";
  }
  p.embedding = file_of(emb);

  std::map<std::string, const json*> files;
  for (const json& f : section["backbone"]["files"]) files[f["path"]] = &f;
  const json& parts = section["backbone"]["parts"];
  auto part = [&](const std::string& name) -> ce_file {
    auto it = files.find(parts.at(name).at("path").get<std::string>());
    if (it == files.end()) throw Usage("manifest: backbone part " + name + " names no file");
    return file_of(*it->second);
  };
  std::vector<ce_file> layers;
  for (int l = 0; l < p.n_layers; ++l) layers.push_back(part("layer_" + std::to_string(l)));
  p.layers = layers.data(), p.head = part("head");

  std::vector<ce_expert> experts;
  int64_t total = 0;
  for (const json& e : section["experts"]) {
    int64_t cost = e.value("resident_bytes", e.at("bytes").get<int64_t>());  // manifest.py expert_cost
    experts.push_back(ce_expert{e.at("layer").get<int32_t>(), e.at("expert").get<int32_t>(), file_of(e), cost});
    total += cost;
  }
  p.experts = experts.data(), p.n_experts = int32_t(experts.size());
  p.verify_sha = o.verify, p.threads = o.threads;
  p.packed_cache = o.packed_cache.empty() ? nullptr : o.packed_cache.c_str();
  p.evicted_pages = o.evicted == "keep" ? CE_EVICTED_KEEP : o.evicted == "drop" ? CE_EVICTED_DROP : CE_EVICTED_AUTO;

  // the run's selection, resolved as runtime/selection.py resolve() does
  int32_t k_main = cfg.value("k_main", 0), k = o.experts_per_token ? o.experts_per_token : (k_main ? k_main : p.top_k);
  if (k < 1 || k > p.top_k)
    throw Usage("--experts-per-token must be between 1 and the model's top-k (" + std::to_string(p.top_k) + ")");
  if (o.on_miss == "compressed" && vectors.empty()) throw Usage("--on-miss compressed needs compressed experts, and this artifact has none");
  if (cmoe && (k != p.top_k || o.on_miss != "wait" || o.cache_bias > 0))
    throw Usage("--experts-per-token, --on-miss and --cache-bias need a softmax router; this model's router is CMoE's (edge-carve)");

  ce_model* model = nullptr;
  check(ce_model_open(&p, &model));
  ce_session_params sp{budget_bytes(o.budget, total), o.policy.c_str(), k, o.on_miss.c_str(), o.skip_below,
                       o.cache_bias, o.prefetch};
  ce_session* session = nullptr;
  if (ce_session_open(model, &sp, &session) != CE_OK) {
    std::string why = ce_last_error();
    ce_model_free(model);
    throw std::runtime_error(why);
  }
  std::vector<int32_t> prompt = parse_ids(o.ids), out;
  for (int32_t id : prompt)
    if (id >= p.vocab_size) throw Usage("--ids: " + std::to_string(id) + " is past the vocabulary (" + std::to_string(p.vocab_size) + ")");
  int64_t eos = m["tokenizer"].contains("eos_id") && m["tokenizer"]["eos_id"].is_number_integer()
                    ? m["tokenizer"]["eos_id"].get<int64_t>() : -1;
  int n_new = std::max(0, std::min(o.max_new_tokens, p.max_seq_len - int(prompt.size())));
  if (o.preload) check(ce_session_preload(session));

  using clock = std::chrono::steady_clock;
  std::mt19937_64 rng(o.seed);
  std::vector<float> logits(size_t(p.vocab_size));
  double prefill_s = 0, decode_s = 0;
  if (n_new > 0) {
    auto t = clock::now();
    check(ce_session_forward(session, prompt.data(), int32_t(prompt.size()), 0, logits.data()));
    while (true) {
      int32_t token = sample(logits, o.temperature, rng);
      double dt = std::chrono::duration<double>(clock::now() - t).count();
      (out.empty() ? prefill_s : decode_s) += dt;
      out.push_back(token);
      if (token == eos || int(out.size()) >= n_new) break;
      t = clock::now();
      check(ce_session_forward(session, &token, 1, 0, logits.data()));
    }
  }
  ce_stats s{};
  ce_session_stats(session, &s);
  ce_session_free(session);
  ce_model_free(model);
  size_t decoded = out.empty() ? 0 : out.size() - 1;
  json r = {{"engine", "native-host"}, {"backend", o.backend}, {"ids", out}, {"prompt_tokens", prompt.size()},
            {"generated_tokens", out.size()},
            {"ttft_ms", prefill_s * 1e3}, {"prefill_tokens_per_s", prefill_s > 0 ? double(prompt.size()) / prefill_s : 0.0},
            {"decode_tokens_per_s", decode_s > 0 ? double(decoded) / decode_s : 0.0},
            {"peak_rss_bytes", proc_value("/proc/self/status", "VmHWM:") * 1024},
            {"storage_read_bytes", proc_value("/proc/self/io", "read_bytes: ")},
            {"memory_budget_bytes", s.budget_bytes}, {"expert_bytes_total", total},
            {"expert_hits", s.hits}, {"expert_misses", s.misses}, {"expert_evictions", s.evictions},
            {"expert_loads", s.loads}, {"expert_load_ms", double(s.load_ns) / 1e6},
            {"resident_expert_bytes_peak", s.resident_bytes_peak}, {"threads", o.threads},
            {"evicted_pages", s.evicted_pages == CE_EVICTED_DROP ? "drop" : "keep"}};
  std::printf("%s\n", r.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const Usage& e) {
    std::fprintf(stderr, "edge-run-native: %s\n", e.what());
    return 2;
  } catch (const json::exception& e) {  // a manifest key of the wrong type or missing
    std::fprintf(stderr, "edge-run-native: the manifest does not follow the format (%s)\n", e.what());
    return 2;
  } catch (const std::exception& e) {  // the core's one line (ce_last_error)
    std::fprintf(stderr, "edge-run-native: %s\n", e.what());
    return 2;
  }
}
