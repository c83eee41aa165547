"""The DIP library: torch, numpy, Pillow and scikit-image only (the module map: docs/architecture.md)."""
