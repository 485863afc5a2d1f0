"""edge-bench: reproducible benchmarks of artifacts across budgets, backends and cache policies."""
