"""Attribution graphs of one prompt: the local replacement model (every attention pattern, norm
denominator and MLP gate frozen at its value on the prompt, so the model is linear in the residual
stream), its exact adjacency between token embeddings, heads and MLP blocks at each position, and
the output (frozen.py, adjacency.py); influence, pruning and circuit-tracer's scores (prune.py);
the plain graph object the front end reads and its exports (graph.py); claims checked by real
ablation (claims.py); supernodes (supernodes.py).
May import: common, arch, hooks, model, features, interventions, analysis."""
