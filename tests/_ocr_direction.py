"""A scoreable task for rapidocr's PP-OCR text-direction classifier
(ch_ppocr_mobile_v2.0_cls_infer.onnx: a MobileNetV3-style net, 2 classes "0"/"180").

Data: text lines rendered with Pillow's built-in scalable font (no system fonts needed):
random words of Latin letters and digits, font size 18-34, dark text on a light
background of random gray levels, a little blur and pixel noise; half of the lines are
rotated by 180 degrees (label 1). Preprocessing is rapidocr's own (TextClassifier
.resize_norm_img): resize to height 48 keeping the aspect ratio (width at most 192),
scale to [-1, 1], pad the width to 192 with zeros; a BGR image of 3 equal channels.
Different seeds give disjoint draws: the tests/benchmarks train on one seed and score on
another.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from graphopt.testing.tasks import packaged_model

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
H, W = 48, 192


def model_path() -> Path | None:
    return packaged_model("rapidocr_onnxruntime", "ch_ppocr_mobile_v2.0_cls_infer.onnx")


def _line(rng) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    words = [''.join(rng.choice(list(ALPHABET), size=rng.integers(2, 9))) for _ in range(rng.integers(1, 4))]
    text = " ".join(words)
    font = ImageFont.load_default(size=int(rng.integers(18, 35)))
    bg, fg = int(rng.integers(170, 256)), int(rng.integers(0, 90))
    box = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    pad = int(rng.integers(2, 8))
    img = Image.new("L", (box[2] - box[0] + 2 * pad, box[3] - box[1] + 2 * pad), bg)
    ImageDraw.Draw(img).text((pad - box[0], pad - box[1]), text, fill=fg, font=font)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 1.0))))
    a = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 8), (img.height, img.width))
    return np.clip(a, 0, 255)


def _norm(gray: np.ndarray) -> np.ndarray:
    import cv2

    h, w = gray.shape
    rw = min(W, int(math.ceil(H * w / h)))
    img = cv2.resize(gray, (rw, H)).astype(np.float32) / 255.0
    out = np.zeros((3, H, W), np.float32)
    out[:, :, :rw] = (img - 0.5) / 0.5
    return out


def make(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n preprocessed text-line images [n, 3, 48, 192] and labels (0 upright, 1 rotated 180)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 3, H, W), np.float32)
    y = (rng.random(n) < 0.5).astype(np.int64)
    for i in range(n):
        g = _line(rng)
        x[i] = _norm(g[::-1, ::-1] if y[i] else g)
    return x, y
