"""Reading the model: traced generation, attention patterns, token influence, composition scores,
attribution patching, discovery of causal heads, circuits and verification of masks.
May import: common, arch, hooks, model, features, interventions."""
