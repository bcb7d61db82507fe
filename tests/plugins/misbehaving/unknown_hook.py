from falaj.core.plugin import hookimpl


@hookimpl
def falaj_teleport_models():
    return []
