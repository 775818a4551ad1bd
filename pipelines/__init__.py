"""Everything that builds or calls diffusers pipelines: loading, generation, the default model."""
