"""Interventions on the model: ops (zero, mean, patch, steer) on heads, attention, MLPs and the
residual stream; single ablations, batched sweeps, metrics, prompt sets and the reference prompts.
May import: common, arch, hooks, model, features."""
