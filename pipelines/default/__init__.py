"""The embedded default model: its data (render), its configs (architecture) and its weights (model/)."""
