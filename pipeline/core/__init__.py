"""The DIP library: torch, numpy, Pillow and scikit-image only (see the README's module table)."""
