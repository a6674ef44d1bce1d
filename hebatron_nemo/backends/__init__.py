"""Training backends behind one interface: `local` (CPU, PyTorch) and `megatron_bridge` (cluster)."""
