"""Code that exists only for the CPU demo's corpora (the general library never names demo sources)."""
