# The wheel 0.8.16251 says 0.8.0 here: the full version is only in the distribution metadata.
__version__ = "0.8.0"
