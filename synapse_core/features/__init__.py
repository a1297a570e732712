"""Sparse features: the corpus, activation harvesting, Top-K SAEs and transcoders (SAELens's
format), their trainer, quality on held-out text, per-feature statistics, and the catalog of SAEs
by stable name (`layers.15.resid.post.sae.1234`). `python -m synapse_core.features.build` rebuilds
the SAEs shipped for the bundled model.
May import: common, arch, hooks, model."""
