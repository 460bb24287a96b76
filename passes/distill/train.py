"""Teacher/student fine-tuning for pass `distill` (torch, one thread).

The teacher runs in onnxruntime (it is the reference: exactly what the user's model
computes); the student runs in the torch interpreter of `interp.py`, so its gradients
are those of the ONNX graph itself.

Loss per graph output (averaged over outputs):
- classifier-like (a float [N, K] output with K >= 2, or the input of a final Softmax):
  KL(teacher || student) on logits softened at temperature T, times T^2, plus the MSE of
  the logits divided by the teacher logits' variance (scale-free);
- anything else: the same normalized MSE plus (1 - cosine) per sample.

Augmentation of the (unlabelled) samples: image-like inputs (float, rank 4, spatial
sides >= 4) are shifted by a random offset of up to 1/16 of each side (at least one
pixel), edges replicated, per sample; every float input gets Gaussian noise of 3 % of the
samples' standard deviation. Integer inputs (token ids, shapes) are used as they are.
The teacher sees the same augmented inputs, so augmentation widens the data, it does not
create label noise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import onnx

from graphopt import GraphoptError, progress

import torch
import torch.nn.functional as F

from .._calibrate import session_with_outputs
from .interp import TorchGraph

log = logging.getLogger("graphopt.passes.distill")

_ORT_FLOAT = "tensor(float)"


@dataclass
class Settings:
    steps: int = 1000
    lr: float = 5e-4
    temperature: float = 4.0
    batch: int = 16
    time_limit: float = 300.0
    holdout: float = 0.2
    augment: bool = True
    seed: int = 0


def pool(samples: list[dict], names: list[str]) -> dict[str, np.ndarray]:
    """All samples stacked along the batch axis, per input."""
    out = {}
    for n in names:
        parts = []
        for s in samples:
            if n not in s:
                raise GraphoptError(f"distill: a sample lacks input '{n}'")
            v = np.asarray(s[n])
            parts.append(v if v.ndim else v[None])
        out[n] = np.concatenate(parts)
    return out


def _softmax_input(proto: onnx.ModelProto, output: str) -> str | None:
    """The logits feeding a final Softmax over the last axis, if `output` is one."""
    for node in proto.graph.node:
        if output in node.output and node.op_type == "Softmax":
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
            if axis == -1 or (opset < 13 and axis == 1):
                return node.input[0]
    return None


def free_batch(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose inputs and outputs have a symbolic batch dimension (value_info
    dropped), for models exported with a fixed batch; the caller checks it still runs."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    del m.graph.value_info[:]
    for v in list(m.graph.input) + list(m.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value"):
            dims[0].dim_param = "distill_batch"
    return m


class _Teacher:
    def __init__(self, proto: onnx.ModelProto, heads: list[str], probe: dict[str, np.ndarray]):
        self.heads = heads
        for candidate in (free_batch(proto), proto):
            self.sess = session_with_outputs(candidate, heads, threads=1, optimize=True)
            self.fixed = {i.name: i.shape[0] for i in self.sess.get_inputs()
                          if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
            if candidate is proto:
                break
            try:  # a batch of two must give the same rows as two single runs
                two = self(probe)
                one = [np.concatenate(p) for p in zip(*(self({k: v[i:i + 1] for k, v in probe.items()}) for i in range(2)))]
                if all(a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(two, one)):
                    break
            except Exception:  # noqa: BLE001 - a batch baked into the graph: run it as exported
                pass

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(feeds.values())))
        step = min(self.fixed.values()) if self.fixed else n
        chunks = [self.sess.run(self.heads, {k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, n, step)]
        return [np.concatenate([c[j] for c in chunks]) for j in range(len(self.heads))]


def _augment(feeds: dict[str, np.ndarray], stds: dict[str, float], rng) -> dict[str, np.ndarray]:
    out = {}
    for name, x in feeds.items():
        if not np.issubdtype(x.dtype, np.floating):
            out[name] = x
            continue
        x = x.copy()
        if x.ndim == 4 and min(x.shape[2:]) >= 4:
            sh, sw = (max(1, round(d / 16)) for d in x.shape[2:])
            padded = np.pad(x, ((0, 0), (0, 0), (sh, sh), (sw, sw)), mode="edge")
            for i in range(len(x)):
                dy, dx = rng.integers(0, 2 * sh + 1), rng.integers(0, 2 * sw + 1)
                x[i] = padded[i, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
        x += rng.standard_normal(x.shape).astype(x.dtype) * (0.03 * stds[name])
        out[name] = x
    return out


def _loss(s_outs, t_outs, kinds, temperature):
    total = 0.0
    for s, t, kind in zip(s_outs, t_outs, kinds):
        t = torch.from_numpy(np.asarray(t, dtype=np.float32))
        s = s.float()
        var = t.var() + 1e-8 if t.numel() > 1 else t.abs().mean() ** 2 + 1e-8
        loss = F.mse_loss(s, t) / var
        if kind == "classifier":
            T = temperature
            loss = loss + F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                                   reduction="batchmean") * T * T
        else:
            flat_s, flat_t = s.reshape(len(s), -1), t.reshape(len(t), -1)
            loss = loss + (1 - F.cosine_similarity(flat_s, flat_t, dim=1, eps=1e-8)).mean()
        total = total + loss
    return total / max(len(kinds), 1)


def _agreement(s_outs, t_outs, kinds) -> dict[str, float]:
    """Held-out metrics: top-1 agreement of classifier heads, worst mean cosine."""
    agree, cos = [], []
    for s, t, kind in zip(s_outs, t_outs, kinds):
        s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
        if kind == "classifier":
            agree.append(float((s.argmax(-1) == t.argmax(-1)).mean()))
        fs, ft = s.reshape(len(s), -1), t.reshape(len(t), -1)
        c = (fs * ft).sum(1) / np.maximum(np.linalg.norm(fs, axis=1) * np.linalg.norm(ft, axis=1), 1e-12)
        cos.append(float(c.mean()))
    out = {"cosine": min(cos)} if cos else {}
    if agree:
        out["top1_agreement"] = min(agree)
    return out


def distill(student: onnx.ModelProto, teacher: onnx.ModelProto, samples: list[dict], cfg: Settings):
    """Fine-tune `student`'s Conv/Gemm/MatMul weights towards `teacher` on `samples`.
    Returns (trained weights by name, or None if training did not improve the held-out
    loss; statistics)."""
    outputs = [o.name for o in student.graph.output]
    if [o.name for o in teacher.graph.output] != outputs:
        raise GraphoptError(f"distill: the teacher's outputs {[o.name for o in teacher.graph.output]} "
                            f"differ from the model's {outputs}")
    heads_s, heads_t, kinds = [], [], []
    for o in student.graph.output:
        s_in, t_in = _softmax_input(student, o.name), _softmax_input(teacher, o.name)
        if s_in and t_in:
            heads_s.append(s_in)
            heads_t.append(t_in)
            kinds.append("classifier")
            continue
        dims = o.type.tensor_type.shape.dim
        last = dims[-1].dim_value if dims else 0
        is_float = o.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        if not is_float:
            continue
        heads_s.append(o.name)
        heads_t.append(o.name)
        kinds.append("classifier" if len(dims) == 2 and last >= 2 else "other")
    if not heads_s:
        raise GraphoptError("distill: the model has no float output to match")

    data = pool(samples, [i.name for i in student.graph.input
                          if i.name not in {t.name for t in student.graph.initializer}])
    probe = {k: v[:2] for k, v in data.items()}
    net = TorchGraph(student, extra_outputs=heads_s)
    if not net.keys:
        raise GraphoptError("distill: no Conv/Gemm/MatMul weights to train")
    index = {n: i for i, n in enumerate(net.outputs)}
    pick = [index[h] for h in heads_s]
    teach = _Teacher(teacher, heads_t, probe)
    n = len(next(iter(data.values())))
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    n_hold = min(max(1, int(round(cfg.holdout * n))), n - 1) if n > 1 else 0
    hold, train = perm[:n_hold], perm[n_hold:]
    if len(train) == 0:
        raise GraphoptError("distill: needs at least 2 sample rows (one held out)")
    stds = {k: float(np.std(v)) if np.issubdtype(v.dtype, np.floating) else 0.0 for k, v in data.items()}
    b0 = None
    dims = [i.type.tensor_type.shape.dim for i in student.graph.input if i.name in data]
    declared = max([d[0].dim_value for d in dims if len(d) and d[0].HasField("dim_value")] or [1])
    if len(next(iter(probe.values()))) == 2:  # the student as one batch, if the graph allows it
        try:
            with torch.no_grad():
                outs = net({k: torch.from_numpy(v) for k, v in probe.items()})
                single = net({k: torch.from_numpy(v[:1]) for k, v in probe.items()})
            if not all(a.shape[:1] == (2,) and torch.allclose(a[:1], b, rtol=1e-4, atol=1e-5)
                       for a, b in zip(outs, single)):
                b0 = declared
        except RuntimeError:
            b0 = declared
    batch = max(cfg.batch, b0 or 1)
    if b0:
        batch -= batch % b0

    def student_run(feeds):
        step = b0 or len(next(iter(feeds.values())))
        parts = []
        m = len(next(iter(feeds.values())))
        for i in range(0, m, step):
            outs = net({k: torch.from_numpy(v[i:i + step]) for k, v in feeds.items()})
            parts.append([outs[j] for j in pick])
        return [torch.cat([p[j] for p in parts]) for j in range(len(pick))]

    def evaluate():
        if not len(hold):
            return None, {}
        feeds = {k: v[hold] for k, v in data.items()}
        t_outs = teach(feeds)
        with torch.no_grad():
            s_outs = student_run(feeds)
            loss = float(_loss(s_outs, t_outs, kinds, cfg.temperature))
        return loss, _agreement([s.numpy() for s in s_outs], t_outs, kinds)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured: two threads beside a busy process were 20x slower
    counted = progress.task("distilling (steps)", cfg.steps)   # time_limit may stop it earlier
    try:
        torch.manual_seed(cfg.seed)
        before_loss, before = evaluate()
        # Weights left mostly at exact zero (a `sparsify` before) keep their zeros.
        masks = [(p, (p.detach() != 0).float()) for p in net.params.parameters()
                 if float((p.detach() == 0).float().mean()) >= 0.2]
        opt = torch.optim.Adam(net.params.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1))
        t0 = time.perf_counter()
        every = max(1, cfg.steps // 10)
        done, running = 0, None
        for step in range(cfg.steps):
            idx = rng.choice(train, size=batch, replace=len(train) < batch)
            feeds = {k: v[idx] for k, v in data.items()}
            if cfg.augment:
                feeds = _augment(feeds, stds, rng)
            t_outs = teach(feeds)
            loss = _loss(student_run(feeds), t_outs, kinds, cfg.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for p, mask in masks:
                    p.mul_(mask)
            done += 1
            counted.advance()
            value = float(loss.detach())
            running = value if running is None else 0.9 * running + 0.1 * value
            if (step + 1) % every == 0 or step == cfg.steps - 1:
                log.info("distill: step %d/%d loss %.4f (%.1fs)", step + 1, cfg.steps, running, time.perf_counter() - t0)
            if time.perf_counter() - t0 > cfg.time_limit:
                log.info("distill: time limit of %.0fs reached after %d steps", cfg.time_limit, done)
                break
        seconds = time.perf_counter() - t0
        after_loss, after = evaluate()
    finally:
        torch.set_num_threads(threads)
        counted.close()
    stats = {"steps": done, "seconds": round(seconds, 2), "samples": int(len(train)), "held_out": int(len(hold)),
             "trained_tensors": len(net.keys), "sparse_tensors_kept": len(masks), "outputs": dict(zip(heads_s, kinds)), "final_loss": running}
    if before_loss is not None:
        stats["held_out_before"] = {"loss": round(before_loss, 5), **{k: round(v, 4) for k, v in before.items()}}
        stats["held_out_after"] = {"loss": round(after_loss, 5), **{k: round(v, 4) for k, v in after.items()}}
        if after_loss > before_loss:
            log.info("distill: held-out loss rose (%.4f -> %.4f): weights left as they were", before_loss, after_loss)
            return None, stats
    return net.trained(), stats
