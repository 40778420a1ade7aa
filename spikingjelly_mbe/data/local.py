"""A user's own held-out data from local files: a plain-text file, a folder of images.

Nothing is downloaded. Both are split into train (calibration) and test (evaluation) by the same
seeded permutation as the shipped data sets (:func:`~.split.split_indices`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .split import LabeledSplit, labeled_split, split_indices, take
from .text import TextSplit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _existing(path: str | Path | None, what: str, key: str) -> Path:
    if not path:
        raise ValueError(f"{key} is required for {what}: pass {key}=/path/to/your/{what.replace(' ', '_')}")
    found = Path(path).expanduser()
    if not found.exists():
        raise FileNotFoundError(f"{key}={path}: no such {what} (pass an existing local path; nothing is downloaded)")
    return found


def load_text_file(path: str | Path | None, seed: int = 0, test_fraction: float = 0.1) -> TextSplit:
    """Non-empty lines of a UTF-8 text file (one document or sentence each), whitespace-normalised,
    split at the document level like :func:`~.text.load_lee_text`."""
    lines = _existing(path, "text file", "data.path").read_text(encoding="utf-8").splitlines()
    docs = [" ".join(line.split()) for line in lines if line.strip()]
    if len(docs) < 2:
        raise ValueError(f"data.path={path}: needs at least 2 non-empty lines (documents), found {len(docs)}")
    train, test = split_indices(len(docs), test_fraction, seed)
    return TextSplit(take(docs, train), take(docs, test))


def load_image_folder(path: str | Path | None, image_size: int = 224, seed: int = 0,
                      test_fraction: float = 0.2) -> LabeledSplit:
    """Every image under ``path`` (recursively, sorted), as RGB uint8 ``[N, 3, image_size, image_size]``.

    Labels are the index of the image's first-level subfolder in sorted order (``ImageFolder``'s
    convention); images lying directly in ``path`` get label 0.
    """
    from PIL import Image

    root = _existing(path, "image folder", "data.path")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"data.path={path}: needs at least 2 images ({', '.join(IMAGE_SUFFIXES)}), found {len(files)}")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    labels = np.array([classes.index(p.relative_to(root).parts[0]) if len(p.relative_to(root).parts) > 1 else 0
                       for p in files], dtype=np.int64)
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((image_size, image_size), Image.BILINEAR))
                       for p in files]).transpose(0, 3, 1, 2)
    return labeled_split(np.ascontiguousarray(images), labels, test_fraction, seed)
