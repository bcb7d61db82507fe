"""The ``falaj`` command line."""

from falaj.api.cli.main import cli, main

__all__ = ["cli", "main"]
