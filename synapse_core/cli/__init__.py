"""`synapse` / `python -m synapse_core`: one module a command group (trace, ablate, discover,
governance), their shared arguments and output in `common`, the parser in `main`.
May import every other subpackage."""
