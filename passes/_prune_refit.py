"""Least-squares reconstruction for pass `prune` (He et al. 2017, without the LASSO step:
the channels are chosen by the importance criterion, passes/_prune_select.py).

`Collector` runs a model on the samples with the pruned layers' inputs exposed as
outputs: per-channel mean |activation| (criterion=activation) and, per consumer (sink),
a fixed random subset of its input rows (im2col patches for a Conv, feature rows for
Gemm/MatMul). `Reconstructor` then re-fits each sink on those rows so that its output
matches the unpruned model's: a ridge regression towards the original weights, or only
the bias when a layer sees fewer rows than features (a classifier after a global pool).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import GraphoptError, progress

from ._calibrate import session_with_outputs
from ._channels import Analysis, Sink, read_constant
from ._prune_rewrite import set_bias

log = logging.getLogger(__name__)

def reconstruct(model, an: Analysis, masks, collector: "Collector", orig_w, orig_b, namer, samples,
                seed: int, rounds: int) -> int:
    """Re-fit the consumer layers of the pruned `model` (in place); the number of layers
    fitted in the first round. Round 1 fits every layer on the original model's inputs
    (`collector`); with rounds > 1 each layer is then refit on the inputs the *pruned*
    model really feeds it (upstream errors included), level by level so that every refit
    sees its already-refitted predecessors (one onnxruntime run of the samples per level).
    Progress: one step per layer and round ("prune: refitting layers")."""
    rec = Reconstructor(an, masks, collector, orig_w, orig_b, namer)
    levels = rec.levels(model.graph) if rounds > 1 else []
    with progress.task("prune: refitting layers", len(rec.sinks) + sum(len(lv) for lv in levels)) as counted:
        fitted = rec.fit_round(None, counted=counted)
        for level in levels:
            rec.fit_round(Collector(model.to_onnx(), an, samples, seed, positions=collector.positions,
                                    tensors={s.tensor for s in level}), only={id(s) for s in level}, counted=counted)
    return fitted


class Collector:
    """Runs a model on samples with sink inputs exposed as outputs; keeps per-channel
    mean |x| and, per sink, a fixed random subset of im2col rows."""

    MAX_ROWS = 8192
    MAX_FLOATS = 250_000_000

    def __init__(self, proto: onnx.ModelProto, an: Analysis, samples, seed: int,
                 positions=None, tensors=None):
        sinks = [s for s in an.sinks if tensors is None or s.tensor in tensors]
        names = sorted({s.tensor for s in sinks})
        sess = session_with_outputs(proto, names, threads=0)  # 0: onnxruntime's default
        rng = np.random.default_rng(seed)
        self.channel_mean_abs: dict[str, np.ndarray] = {}
        self.positions = positions if positions is not None else {}
        self.rows: dict[int, list[np.ndarray]] = {id(s): [] for s in sinks}
        sums: dict[str, np.ndarray] = {}
        counts: Counter = Counter()
        feats = {id(s): int(np.prod(s.weight.get().shape) // max(s.weight.get().shape[0 if s.axis == 1 else 1], 1))
                 for s in sinks}
        budget = {k: int(np.clip(4 * f, 2048, self.MAX_ROWS)) for k, f in feats.items()}
        total = sum(budget[k] * feats[k] for k in budget)
        if total > self.MAX_FLOATS:  # keep the stored rows under ~1 GB
            budget = {k: max(256, int(v * self.MAX_FLOATS / total)) for k, v in budget.items()}
        feed_list = list(_feeds(sess, samples))
        for si, feeds in enumerate(feed_list):
            outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
            for n in names:
                x = np.asarray(outs[n], dtype=np.float64)
                lay = an.layouts[n]
                axes = tuple(i for i in range(x.ndim) if i != lay.axis)
                s = np.abs(x).sum(axis=axes)
                if n in sums and sums[n].shape == s.shape:
                    sums[n] += s
                else:
                    sums[n] = s
                counts[n] += int(np.prod([x.shape[i] for i in axes]))
            for s in sinks:
                x = outs[s.tensor]
                key = (id(s), si)
                if key not in self.positions:
                    per_sample = max(1, budget[id(s)] // max(len(feed_list), 1))
                    self.positions[key] = _draw_positions(s, x, per_sample, rng)
                pos = self.positions[key]
                if pos is None:
                    continue
                self.rows[id(s)].append(_gather_rows(s, x, pos))
        self.channel_mean_abs = {n: sums[n] / max(counts[n], 1) for n in sums}


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


def _feeds(sess, samples):
    """Feeds for each sample: cast to the input's dtype; a sample batch larger than a
    fixed model batch is split into model-sized chunks (in order, deterministic)."""
    inputs = sess.get_inputs()
    for sample in samples:
        arrays = {}
        for i in inputs:
            if i.name not in sample:
                raise GraphoptError(f"sample lacks input '{i.name}'")
            v = np.asarray(sample[i.name])
            dtype = _ORT_TYPES.get(i.type)
            arrays[i.name] = v.astype(dtype) if dtype is not None and v.dtype != dtype else v
        fixed = {i.name: i.shape[0] for i in inputs if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
        first = next(iter(arrays.values()))
        batch = fixed.get(inputs[0].name)
        if batch and first.ndim and first.shape[0] > batch and first.shape[0] % batch == 0 and len(fixed) == len(inputs):
            for start in range(0, first.shape[0], batch):
                yield {k: v[start:start + batch] for k, v in arrays.items()}
        else:
            yield arrays


def _conv_geometry(node: gs.Node, x_shape, w_shape):
    k = list(w_shape[2:])
    nd = len(k)
    strides = list(node.attrs.get("strides", [1] * nd))
    dil = list(node.attrs.get("dilations", [1] * nd))
    pads = list(node.attrs.get("pads", [0] * (2 * nd)))
    auto = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    spatial = list(x_shape[2:])
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - spatial[i])
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[i + nd] = lo, total - lo
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    out = [(spatial[i] + pads[i] + pads[i + nd] - (k[i] - 1) * dil[i] - 1) // strides[i] + 1 for i in range(nd)]
    return k, strides, dil, pads, out


def _draw_positions(s: Sink, x: np.ndarray, n: int, rng):
    if s.kind == "conv":
        if x.ndim != 4:
            return None  # reconstruction supports 2-D convolutions
        w_shape = s.weight.get().shape
        k, strides, dil, pads, out = _conv_geometry(s.node, x.shape, w_shape)
        total = x.shape[0] * out[0] * out[1]
        idx = rng.choice(total, size=min(n, total), replace=False)
        b, rem = np.divmod(idx, out[0] * out[1])
        oh, ow = np.divmod(rem, out[1])
        return (b, oh, ow)
    rows = int(np.prod(x.shape[:-1])) if s.kind == "matmul" else x.shape[0]
    return rng.choice(rows, size=min(n, rows), replace=False)


def _gather_rows(s: Sink, x: np.ndarray, pos) -> np.ndarray:
    """Input rows of the sink at the drawn positions: im2col patches for a Conv
    ([R, C*kh*kw], weight order), feature rows for Gemm/MatMul ([R, K])."""
    if s.kind == "conv":
        w_shape = s.weight.get().shape
        k, strides, dil, pads, out = _conv_geometry(s.node, x.shape, w_shape)
        xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        b, oh, ow = pos
        cols = np.empty((len(b), x.shape[1], k[0], k[1]), dtype=np.float32)
        for i in range(k[0]):
            for j in range(k[1]):
                cols[:, :, i, j] = xp[b, :, oh * strides[0] + i * dil[0], ow * strides[1] + j * dil[1]]
        return cols.reshape(len(b), -1)
    flat = x.reshape(-1, x.shape[-1]) if s.kind == "matmul" else x
    return np.asarray(flat[pos], dtype=np.float32)


class Reconstructor:
    """Least-squares re-fit of sink layers (He et al. 2017, without the LASSO step: the
    channels are chosen by the importance criterion)."""

    MAX_FEATURES = 6000
    RIDGE = 1e-2
    MIN_ROWS_PER_FEATURE = 2

    def __init__(self, an: Analysis, masks, collector: Collector, orig_w, orig_b, namer):
        self.an, self.masks, self.namer = an, masks, namer
        self.targets: dict[int, np.ndarray] = {}
        self.priors: dict[int, tuple] = {}
        self.sinks = []
        for s in an.sinks:
            in_mask = masks[s.tensor]
            rows = collector.rows.get(id(s))
            if in_mask.all() or not rows:
                continue
            w = orig_w[id(s)].astype(np.float64)
            x_full = np.concatenate(rows)
            if s.kind == "conv":
                w2 = w.reshape(w.shape[0], -1)  # [Cout, Cin*k]
            elif s.kind == "gemm":
                w2 = w if s.axis == 1 else w.T  # [N, K]
            else:
                w2 = w.T
            alpha = float(s.node.attrs.get("alpha", 1.0)) if s.kind == "gemm" else 1.0
            beta = float(s.node.attrs.get("beta", 1.0)) if s.kind == "gemm" else 1.0
            y = alpha * (x_full.astype(np.float64) @ w2.T)
            b = orig_b[id(s)]
            if b is not None:
                y = y + beta * np.broadcast_to(b.reshape(-1), y.shape[1:])
            out_mask = masks.get(s.node.outputs[0].name)
            if out_mask is not None and not out_mask.all():
                y = y[:, out_mask]
            if s.kind == "conv":
                feat_mask = np.repeat(in_mask, int(np.prod(w.shape[2:])))
            else:
                feat_mask = in_mask
            if int(feat_mask.sum()) > self.MAX_FEATURES:
                log.info("prune: %s has too many features for reconstruction; skipped", s.node.name)
                continue
            self.targets[id(s)] = y
            # Prior: the original weights on the kept inputs/outputs (and bias). The fit is
            # a ridge regression *towards* them, so that directions the samples do not
            # cover (few rows, e.g. after a global pool) keep the original behaviour.
            w0 = alpha * w2[:, feat_mask]
            b0 = beta * np.broadcast_to(b.reshape(-1), (w2.shape[0],)) if b is not None else np.zeros(w2.shape[0])
            if out_mask is not None and not out_mask.all():
                w0, b0 = w0[out_mask], b0[out_mask]
            self.priors[id(s)] = (w0.T, b0)
            self.sinks.append((s, feat_mask, x_full[:, feat_mask]))

    def levels(self, graph: gs.Graph) -> list[list[Sink]]:
        """The fitted sinks grouped by depth: a sink's input depends only on sinks of
        lower levels."""
        by_node = {id(s.node): s for s, _, _ in self.sinks}
        level: dict[str, int] = {}
        out: dict[int, list[Sink]] = {}
        for node in graph.nodes:  # topological order
            lv = max((level.get(t.name, 0) for t in node.inputs), default=0)
            s = by_node.get(id(node))
            if s is not None:
                lv += 1
                out.setdefault(lv, []).append(s)
            for t in node.outputs:
                level[t.name] = lv
        return [out[k] for k in sorted(out)]

    def fit_round(self, collector: Collector | None, only: set | None = None, counted=None) -> int:
        """Re-fit the sinks (those in `only`) on the rows of `collector` (None: the
        original model's); one step of the progress task `counted` per sink."""
        fitted = 0
        for s, feat_mask, x_orig in self.sinks:
            if only is not None and id(s) not in only:
                continue
            if counted is not None:
                counted.advance()
            if collector is None:
                x = x_orig
            else:
                rows = collector.rows.get(id(s))
                if not rows:
                    continue
                x = np.concatenate(rows)
            y = self.targets[id(s)]
            if x.shape[0] != y.shape[0]:
                continue
            if self._fit(s, x, y):
                fitted += 1
        return fitted

    def _fit(self, s: Sink, x: np.ndarray, y: np.ndarray) -> bool:
        node = s.node
        bias_add = _matmul_bias(node) if s.kind == "matmul" else None
        use_bias = s.kind in ("conv", "gemm") or bias_add is not None
        x = x.astype(np.float64)
        a = np.hstack([x, np.ones((x.shape[0], 1))]) if use_bias else x
        w0, b0 = self.priors[id(s)]
        prior = np.vstack([w0, b0[None]]) if use_bias else w0
        if x.shape[0] < self.MIN_ROWS_PER_FEATURE * a.shape[1]:
            # Too few rows (a classifier after a global pool, squeeze-excite convs: one
            # row per sample): a full fit would memorize the samples. Keep the weights
            # and re-fit only the bias (mean compensation of the removed channels).
            if not use_bias:
                return False
            sol = prior.copy()
            sol[-1] = (y - x @ w0).mean(axis=0)
        else:
            # Ridge regression towards the prior (the original weights on the kept inputs).
            ata = a.T @ a
            lam = self.RIDGE * max(np.trace(ata) / ata.shape[0], 1e-12)
            ata[np.diag_indices_from(ata)] += lam
            try:
                sol = np.linalg.solve(ata, a.T @ y + lam * prior)  # [F(+1), Cout]
            except np.linalg.LinAlgError:
                return False
        wmat, bias = (sol[:-1].T, sol[-1]) if use_bias else (sol.T, None)
        cur = s.weight.get()
        dtype = cur.dtype
        if s.kind == "conv":
            new_w = wmat.reshape(cur.shape)
        elif s.kind == "gemm":
            alpha = float(node.attrs.get("alpha", 1.0)) or 1.0
            wmat = wmat / alpha
            new_w = wmat if s.axis == 1 else wmat.T
        else:
            new_w = wmat.T
        if new_w.shape != cur.shape:
            return False
        s.weight.set(new_w.astype(dtype), self.namer)
        if bias is not None and bias_add is not None:
            add, idx = bias_add  # MatMul -> Add(const): the intercept shifts that bias
            old = np.asarray(add.inputs[idx].values)
            add.inputs[idx].values = (old + bias.reshape(old.shape)).astype(old.dtype)
        elif bias is not None:
            if s.kind == "gemm":
                beta = float(node.attrs.get("beta", 1.0))
                if beta == 0.0:
                    node.attrs["beta"] = 1.0
                    beta = 1.0
                bias = bias / beta
            set_bias(node, bias.astype(dtype), self.namer)
        return True



def _matmul_bias(node: gs.Node):
    """(Add node, input index) when a MatMul's only consumer adds a constant bias vector
    of its output width that nothing else reads; else None."""
    y = node.outputs[0]
    if len(y.outputs) != 1 or y.outputs[0].op != "Add":
        return None
    add = y.outputs[0]
    idx = 1 if add.inputs[0] is y else 0
    c = add.inputs[idx]
    n = node.inputs[1].values.shape[-1] if isinstance(node.inputs[1], gs.Constant) else None
    if not isinstance(c, gs.Constant) or len(c.outputs) != 1 or c.values.size != n or c.values.shape[-1] != n:
        return None
    return add, idx


def bias_of(s: Sink):
    node = s.node
    if len(node.inputs) > 2 and node.inputs[2].name:
        v = read_constant(node.inputs[2])
        return None if v is None else np.array(v)
    return None

