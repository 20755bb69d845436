"""symdiff: 3D molecule generation with SymDiff (stochastically symmetrised diffusion)."""

__version__ = "0.1.0"
