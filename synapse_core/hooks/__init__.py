"""The only place that touches PyTorch hooks: the per-thread dispatcher, Synapse's attention function
(registered with transformers), and head masks as site functions.
May import: common, arch."""
