"""Image classifiers that judge what a model drew (the default model ships its own)."""
