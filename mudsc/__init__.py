"""mudsc: merge independently trained networks without training, and see why a merge works."""
__version__ = "0.1.0"
