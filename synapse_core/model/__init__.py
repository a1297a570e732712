"""The loaded model: loading from a folder, a .gguf file or a hub id (with a safetensors cache),
tokens, and token-by-token generation with site functions in force.
May import: common, arch, hooks."""
