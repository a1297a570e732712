"""The loaded model: loading from a folder, a .gguf file or a hub id (with a safetensors cache),
tokens, token-by-token generation with site functions in force, and the Mapper that spreads a long
computation over its cases (mapper.py: in this process here, on Ray in the job engine).
May import: common, arch, hooks."""
