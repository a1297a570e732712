"""What a model family looks like: the adapter table (where layers, attention, the output projection
and the MLP live) and the names of heads, sites and interventions derived from it.
May import: common."""
