"""Nemotron-H models built from configs (random init; never from a hub)."""
