"""dip: Deep Image Prior restoration at cluster scale.

The notebook face (names load on first use, so ``import pipeline`` stays light)::

    from pipeline import Options, read, restore, write
    restored = restore(read("noisy.png"), Options(task="denoise", preset="cpu-small"))
    write("restored.png", restored.picture)

Layers, imports flowing one way: ``cli`` -> ``evaluation`` -> ``batch`` -> ``core`` and
``storage``. ``core`` is the DIP library (torch, numpy, Pillow, scikit-image only).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "restore": "pipeline.core.restore",
    "restore_many": "pipeline.core.packed",
    "Restoration": "pipeline.core.restore",
    "Options": "pipeline.core.options",
    "fit": "pipeline.core.fit",
    "FitConfig": "pipeline.core.config",
    "Picture": "pipeline.core.images",
    "read": "pipeline.core.images",
    "write": "pipeline.core.encoding",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
