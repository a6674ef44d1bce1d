"""The local backend: plain PyTorch on transformers' NemotronHForCausalLM (CPU; gloo for 2 processes)."""
