"""Rotten Tomatoes movie-review snippets with human sentiment ratings (Hutto & Gilbert, ICWSM 2014).

10,605 sentence-level snippets, each rated by at least 20 people on [-4, 4]; shipped inside the
source distribution of ``vaderSentiment==3.3.2`` (``additional_resources/hutto_ICWSM_2014.tar.gz``).
Polarity is the sign of the mean rating; snippets rated within ``neutral_margin`` of 0 are dropped
(0.5 by default: 533 snippets, leaving 10,072, 49.6 % positive).
"""
from __future__ import annotations

import numpy as np

from .assets import archive_member, cache_dir
from .split import LabeledSplit, labeled_split

SDIST_COMMAND = "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2"
SNIPPETS = "movieReviewSnippets_GroundTruth.txt"


def read_reviews() -> tuple[list[str], np.ndarray]:
    """All snippets and their mean sentiment ratings, in file order."""
    inner = archive_member("vaderSentiment-3.3.2.tar.gz", "hutto_ICWSM_2014.tar.gz", SDIST_COMMAND)
    path = archive_member(inner.name, SNIPPETS, SDIST_COMMAND, folder=cache_dir("extracted"))
    texts, scores = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            _, score, text = line.split("\t", 2)
            texts.append(text.strip())
            scores.append(float(score))
    return texts, np.asarray(scores)


def load_reviews(seed: int = 0, test_fraction: float = 0.2, neutral_margin: float = 0.5) -> LabeledSplit:
    """Binary polarity (1 = positive) split into train/test lists of strings."""
    texts, scores = read_reviews()
    keep = np.flatnonzero(np.abs(scores) >= neutral_margin)
    labels = (scores[keep] > 0).astype(np.int64)
    return labeled_split([texts[i] for i in keep], labels, test_fraction, seed)
