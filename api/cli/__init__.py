"""The ``falaj`` command line."""

from falaj.api.cli import features  # registers `falaj features`
from falaj.api.cli.main import cli, main

__all__ = ["cli", "features", "main"]
