"""The package's version, in the bottom layer: the package, setup.cfg and the fitted neurons' files read it."""
__version__ = "0.1.0"
