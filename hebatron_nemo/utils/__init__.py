"""Small helpers every part of the library uses: atomic file writers and JSON reading (`io`), content
hashes (`hashing`), and keeping megatron-core's import-time logging quiet (`logs`)."""
