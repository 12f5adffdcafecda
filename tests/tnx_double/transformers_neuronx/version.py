import os

__version__ = os.environ.get("TNX_DOUBLE_VERSION", "0.13.322")


def api() -> str:
    major_minor = tuple(int(p) for p in __version__.split(".")[:2])
    return "v2" if major_minor >= (0, 13) else "v1"
