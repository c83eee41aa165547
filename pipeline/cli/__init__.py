"""The ``dip`` command (``main.py``); one module a command group."""
