"""The Megatron-Bridge backend. Megatron-Bridge is imported lazily, only inside functions here: it
does not install on CPU machines (see docs/environments.md)."""
