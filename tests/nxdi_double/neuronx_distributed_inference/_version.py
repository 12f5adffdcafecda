# The wheel 0.8.16251 says 0.8.0 here (0.9.17334: 0.9.0): the full version is only in the
# distribution metadata. Which release the double plays: _release.py.
from ._release import MODULE_VERSION as __version__

__all__ = ["__version__"]
