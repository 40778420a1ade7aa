"""Offline data sets: movie-review polarity, MNIST digits, English news text."""
from .assets import AssetMissingError, cache_dir
from .digits import load_mnist
from .reviews import load_reviews
from .split import LabeledSplit
from .text import TextSplit, load_lee_text

__all__ = ["AssetMissingError", "LabeledSplit", "TextSplit", "cache_dir", "load_lee_text", "load_mnist",
           "load_reviews"]
