"""The one marker pair of the project and the version of the hook API."""

import pluggy

PROJECT = "falaj"
#: Version of the hook API. A plugin spec declares the version it was written for in ``api_version``;
#: specs written for a newer API than this kernel knows are refused.
HOOK_API_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
