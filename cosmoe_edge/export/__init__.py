"""edge-export: model.pt -> artifact/ (a backbone plus one program per expert, per backend)."""
