"""Real input samples: folders of .npz files keyed by graph input name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import GraphoptError


def load_samples(path: str | Path, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Load samples from a folder of .npz files (or one .npz file).

    Each .npz holds one array per graph input. An array whose first dimension is larger
    than the model's batch is fine: it is one sample. Files are read in name order.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise GraphoptError(f"{path}: no .npz files in samples folder")
    elif path.is_file():
        files = [path]
    else:
        raise GraphoptError(f"{path}: samples path not found")
    samples = []
    for f in files[:limit] if limit else files:
        try:
            with np.load(f, allow_pickle=False) as data:
                samples.append({k: data[k] for k in data.files})
        except (OSError, ValueError) as e:
            raise GraphoptError(f"{f}: not a readable .npz file ({e})") from e
    return samples


def check_samples(samples: list[dict[str, np.ndarray]], input_names: list[str]) -> None:
    """Every sample provides every graph input, with nothing unknown."""
    wanted = set(input_names)
    for i, sample in enumerate(samples):
        missing = wanted - set(sample)
        extra = set(sample) - wanted
        if missing:
            raise GraphoptError(f"sample {i} lacks input(s) {', '.join(sorted(missing))}")
        if extra:
            raise GraphoptError(f"sample {i} has unknown input(s) {', '.join(sorted(extra))}")
