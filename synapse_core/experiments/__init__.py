"""Results kept on disk: the content-addressed result store and the experiment records of
ablations, sweeps, prompt sets, traces and discoveries (list, reopen by hash, export).
May import: common, arch, hooks, model, features, interventions, analysis."""
