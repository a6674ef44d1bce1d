"""Hebatron recipes: localize Nemotron-3 Nano 30B-A3B into Hebrew (CPT curriculum + anchor, SFT, eval)."""

__version__ = "0.1.0"
