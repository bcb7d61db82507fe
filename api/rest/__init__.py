"""The admin REST API (Litestar): controllers authenticate and build Actions; the control plane decides."""

from falaj.api.rest.app import create_app

__all__ = ["create_app"]
