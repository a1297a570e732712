"""The lowest layer: exception types, settings (where Synapse keeps its files), durable files with
locks, and the content hash that names stored results. Imports nothing from synapse_core."""
