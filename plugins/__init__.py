"""Builtin backends. Each is a plugin registered through the same hooks as a third-party plugin.

ML frameworks are imported inside the plugins that need them, lazily, so the kernel starts without them.
"""
