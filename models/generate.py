"""Regenerate the small models shipped in models/.

    pip install torch==2.13.0        # dev-only: the shipped models do not need torch
    python models/generate.py

Writes, next to this script:

  digits_cnn.onnx        small residual CNN trained on scikit-learn's digits (8x8, 10 classes)
  digits_test.npz        held-out test set: "input" float32 [M,1,8,8] (normalized), "label" int64
  digits_calib.npz       64 training samples, "input" float32 [64,1,8,8], for calibration
  tiny_transformer.onnx  2-layer transformer encoder with random (seeded) weights

Data split: sklearn.datasets.load_digits() in its bundled order; samples [0, 1500) train,
[1500, 1797) are the test set. Preprocessing: x / 16.0 (pixel values are 0..16), recorded in
the CNN's metadata_props under "preprocess".

Everything is seeded and torch runs single-threaded with deterministic algorithms, so a rerun
on the same torch version reproduces the same weights. Both models are exported with the
TorchScript exporter (dynamo=False): the digits CNN keeps its BatchNormalization nodes
(the optimizer's Conv-BN folding needs something to fold), and the transformer is exported at
opset 14 so LayerNorm and GELU come out decomposed (ReduceMean/Sub/Pow/... and Erf).
"""

from __future__ import annotations

import io
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 0
N_TRAIN = 1500
N_CALIB = 64
PREPROCESS = "x / 16.0"


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


# --------------------------------------------------------------------------------------
# Digits CNN
# --------------------------------------------------------------------------------------


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class ResidualBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(c, c), nn.Conv2d(c, c, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + x)


class DigitsCNN(nn.Module):
    """8x8 -> conv(1->16) -> res(16) -> conv s2 (16->32) -> res(32) -> GAP -> Linear(32->10)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(1, 16), ResidualBlock(16),
                                      conv_bn_relu(16, 32, stride=2), ResidualBlock(32),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.features(x))


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # PREPROCESS
    y = d.target.astype(np.int64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate a batch of images by (dy, dx) in {-1, 0, 1} pixels, filling with zeros."""
    x = nn.functional.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return x[..., 1 - dy:h - 1 - dy, 1 - dx:w - 1 - dx]


def train_digits(x: np.ndarray, y: np.ndarray, epochs: int = 60) -> DigitsCNN:
    seed_everything()
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * 24)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for idx in perm.split(64):  # 24 batches per epoch
            # light augmentation: shift by up to one pixel
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = shift(xt[idx], dy, dx)
            loss = nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def export(model: nn.Module, args: tuple, *, input_names, output_names,
           dynamic_axes, opset: int, constant_folding: bool) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(model, args, buf, dynamo=False, opset_version=opset,
                      input_names=input_names, output_names=output_names,
                      dynamic_axes=dynamic_axes, do_constant_folding=constant_folding,
                      training=torch.onnx.TrainingMode.EVAL)
    return onnx.load_from_string(buf.getvalue())


def set_metadata(model: onnx.ModelProto, **props: str) -> None:
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=str(v))


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def build_digits() -> float:
    xtr, ytr, xte, yte = digits_data()
    model = train_digits(xtr, ytr)
    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())

    # Constant folding off: with it on, the exporter folds BatchNormalization into the Conv.
    proto = export(model, (torch.from_numpy(xte[:2]),),
                   input_names=["input"], output_names=["logits"],
                   dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset=17,
                   constant_folding=False)
    ops = Counter(n.op_type for n in proto.graph.node)
    for required in ("Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool", "Gemm"):
        if not ops[required]:
            sys.exit(f"digits_cnn export lacks {required}: {dict(ops)}")
    if any(len(n.output) > 1 for n in proto.graph.node if n.op_type == "BatchNormalization"):
        sys.exit("digits_cnn exported training-mode BatchNormalization")

    logits = ort_session(proto).run(None, {"input": xte})[0]
    acc = float((logits.argmax(1) == yte).mean())
    if acc < 0.95:
        sys.exit(f"digits_cnn test accuracy {acc:.4f} < 0.95")
    with torch.no_grad():
        ref = model(torch.from_numpy(xte)).numpy()
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)

    proto.doc_string = "Residual CNN for sklearn digits (8x8 grayscale, 10 classes)."
    set_metadata(proto, preprocess=PREPROCESS,
                 dataset="sklearn.datasets.load_digits",
                 split=f"train [0,{N_TRAIN}), test [{N_TRAIN},1797)",
                 test_accuracy=f"{acc:.4f}",
                 labels="0,1,2,3,4,5,6,7,8,9",
                 generator="models/generate.py")
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, HERE / "digits_cnn.onnx")
    np.savez_compressed(HERE / "digits_test.npz", input=xte, label=yte)
    rng = np.random.default_rng(SEED)
    calib = xtr[np.sort(rng.choice(len(xtr), N_CALIB, replace=False))]
    np.savez_compressed(HERE / "digits_calib.npz", input=calib)
    print(f"digits_cnn: torch acc {torch_acc:.4f}, onnxruntime acc {acc:.4f} "
          f"on {len(yte)} test samples; ops {dict(ops)}")
    return acc


# --------------------------------------------------------------------------------------
# Tiny transformer
# --------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

    def split(self, t):
        b, s, _ = t.shape
        return t.view(b, s, self.heads, self.dh).transpose(1, 2)

    def forward(self, x):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / self.dh ** 0.5, dim=-1)
        ctx = (att @ v).transpose(1, 2)
        return self.out(ctx.reshape(x.shape))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    def __init__(self, vocab=100, d=64, heads=4, layers=2, ff=256, max_len=128):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(d, heads, ff) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, input_ids):
        x = self.tok(input_ids) + self.pos[: input_ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.ln_f(x)


def build_transformer() -> None:
    seed_everything()
    model = TinyTransformer().eval()
    with torch.no_grad():  # perturb LayerNorm affine params so they are not trivial 1 / 0
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(torch.randn_like(m.weight) * 0.1)
                m.bias.add_(torch.randn_like(m.bias) * 0.1)
    ids = torch.randint(0, 100, (2, 16))
    proto = export(model, (ids,),
                   input_names=["input_ids"], output_names=["hidden"],
                   dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                 "hidden": {0: "batch", 1: "seq"}}, opset=14,
                   constant_folding=True)
    ops = Counter(n.op_type for n in proto.graph.node)
    required_ops = ("Gather", "ReduceMean", "Pow", "Sqrt", "Erf", "Softmax", "MatMul", "Transpose")
    for required in required_ops:
        if not ops[required]:
            sys.exit(f"tiny_transformer export lacks {required}: {dict(ops)}")
    if ops["LayerNormalization"]:
        sys.exit("tiny_transformer export has fused LayerNormalization")

    sess = ort_session(proto)
    for shape in [(2, 16), (1, 5), (3, 40)]:
        x = torch.randint(0, 100, shape)
        out = sess.run(None, {"input_ids": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-4)
        assert out.shape == (*shape, 64)

    proto.doc_string = "2-layer pre-LN transformer encoder, d_model=64, 4 heads, random weights."
    set_metadata(proto, vocab_size="100", d_model="64", heads="4", layers="2", max_seq="128",
                 weights=f"random, torch.manual_seed({SEED})", generator="models/generate.py")
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, HERE / "tiny_transformer.onnx")
    print(f"tiny_transformer: ops {dict(ops)}")


def main() -> None:
    build_digits()
    build_transformer()
    for p in sorted(HERE.glob("*.onnx")) + sorted(HERE.glob("*.npz")):
        print(f"{p.name}: {p.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
