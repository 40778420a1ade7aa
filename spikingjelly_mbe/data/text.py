"""Plain English news text: gensim's Lee corpus (``test/test_data/lee_background.cor``).

300 Australian news documents, one per line (59,890 words). Read from the gensim wheel or
sdist in the downloads folder, or from an installed gensim, never importing gensim.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .assets import AssetMissingError, archive_member, package_dir
from .split import split_indices, take

DOWNLOAD_COMMAND = "pip download --no-deps gensim==4.4.0"
MEMBER = "test/test_data/lee_background.cor"


@dataclass(frozen=True)
class TextSplit:
    """Documents split into train and test."""

    train: list[str]
    test: list[str]


def _corpus_path() -> Path:
    try:
        installed = package_dir("gensim", "gensim==4.4.0") / MEMBER
        if installed.exists():
            return installed
    except AssetMissingError:
        pass
    return archive_member("gensim-*", MEMBER, DOWNLOAD_COMMAND)


def read_lee_documents() -> list[str]:
    """The 300 documents, whitespace-normalised, in file order."""
    lines = _corpus_path().read_text(encoding="utf-8").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip()]


def load_lee_text(seed: int = 0, test_fraction: float = 0.1) -> TextSplit:
    """Seeded document-level train/test split of the Lee corpus."""
    docs = read_lee_documents()
    train, test = split_indices(len(docs), test_fraction, seed)
    return TextSplit(take(docs, train), take(docs, test))
