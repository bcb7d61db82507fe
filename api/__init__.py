"""Interfaces to the control plane: the command line (and, later, the admin REST API).

Thin by design: they authenticate the caller, build an ``Action`` and let the control plane decide.
"""
