"""The pass manager: spec parsing, registry, options, groups to a fixed point,
instruments, custom passes (decorator, --plugin, entry points) and the example pass."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphopt
from graphopt import Instrument, Model, Option, Pass, PassContext, PassManager, PassResult, pipeline
from graphopt.cli import main
from graphopt.errors import GraphoptError
from graphopt.pipeline import build_pipeline
from graphopt.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture
def registry():
    """Restore the pass registry (and discovery state) after the test."""
    pipeline.discover()
    saved = (dict(pipeline._PASSES), dict(pipeline._GROUPS), pipeline._discovered)
    yield
    pipeline._PASSES.clear()
    pipeline._PASSES.update(saved[0])
    pipeline._GROUPS.clear()
    pipeline._GROUPS.update(saved[1])
    pipeline._discovered = saved[2]


def chain_model(n_identity: int = 3, dead: int = 2) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes, cur = [], "x"
    for i in range(n_identity):
        nodes.append(helper.make_node("Identity", [cur], [f"id{i}"], name=f"id{i}"))
        cur = f"id{i}"
    nodes.append(helper.make_node("Relu", [cur], ["y"], name="relu"))
    for i in range(dead):
        nodes.append(helper.make_node("Neg", ["x"], [f"dead{i}"], name=f"dead{i}"))
    g = helper.make_graph(nodes, "chain", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


# ------------------------------------------------------------------ spec parser


def test_parse_spec_forms():
    items = parse_spec("clean, fuse,prune(ratio=0.3),quant(mode=static)")
    assert [i.name for i in items] == ["clean", "fuse", "prune", "quant"]
    assert items[2].options == {"ratio": 0.3} and items[3].options == {"mode": "static"}
    items = parse_spec("p(ops=[Relu, 'Add', \"Mul\"], name='a,b(c)', n=3, flag=true)")
    assert items[0].options == {"ops": ["Relu", "Add", "Mul"], "name": "a,b(c)", "n": 3, "flag": True}


@pytest.mark.parametrize("spec, msg", [
    ("", "empty pipeline spec"),
    ("   ", "empty pipeline spec"),
    ("clean,", "expected a pass name"),
    ("prune(ratio)", "expected '='"),
    ("prune(ratio=0.3", "expected '\\)'"),
    ("prune(ratio=0.3,ratio=0.4)", "given twice"),
    ("clean fuse", "expected ','"),
    ("prune(ratio=)", "has no value"),
])
def test_bad_specs_are_one_line_errors(spec, msg):
    with pytest.raises(GraphoptError, match=msg) as e:
        build_pipeline(spec)
    assert "\n" not in str(e.value)


def test_unknown_pass_lists_what_exists():
    with pytest.raises(GraphoptError) as e:
        build_pipeline("clena")
    msg = str(e.value)
    assert "\n" not in msg and "unknown pass 'clena'" in msg and "did you mean 'clean'" in msg
    for name in list(pipeline.list_passes()) + list(pipeline.groups()):
        assert name in msg


def test_bad_option_lists_options(registry):
    @graphopt.register_pass("t-opt")
    class T(Pass):
        """Has options."""
        options = {"ratio": Option(float, 0.5), "n": Option(int, 1), "on": Option(bool, False),
                   "mode": Option(str, "a", choices=("a", "b")), "ops": Option(list, [])}

        def run(self, model, ctx):
            return False

    with pytest.raises(GraphoptError, match=r"has no option 'bogus' \(options: mode, n, on, ops, ratio\)"):
        build_pipeline("t-opt(bogus=1)")
    for spec, msg in (("t-opt(n=1.5)", "expected an integer"), ("t-opt(ratio=x)", "expected a number"),
                      ("t-opt(on=maybe)", "expected true or false"), ("t-opt(mode=c)", "one of a, b")):
        with pytest.raises(GraphoptError, match=msg):
            build_pipeline(spec)
    p = build_pipeline("t-opt(ratio=1, n=2, on=yes, mode=b, ops=[Relu,Add])")[0].passes[0]
    assert (p.ratio, p.n, p.on, p.mode, p.ops) == (1.0, 2, True, "b", ["Relu", "Add"])
    assert isinstance(p.ratio, float)
    assert build_pipeline("t-opt(ops=Relu)")[0].passes[0].ops == ["Relu"]
    with pytest.raises(GraphoptError, match="takes no options"):
        build_pipeline("clean(x=1)")


def test_spec_as_list_and_pass_instances(registry):
    @graphopt.register_pass("t-list")
    class T(Pass):
        """x"""
        options = {"k": Option(int, 0)}

        def run(self, model, ctx):
            return False

    stages = build_pipeline(["clean", "t-list(k=2)", T(k=5)])
    assert [s.group for s in stages] == ["clean", None, None]
    assert [s.passes[0].k for s in stages[1:]] == [2, 5]


def test_register_validates(registry):
    with pytest.raises(ValueError, match="invalid pass name"):
        graphopt.register_pass("bad name")
    with pytest.raises(ValueError, match="contract"):
        @graphopt.register_pass("t-c")
        class C(Pass):
            contract = "maybe"
    with pytest.raises(ValueError, match="already registered"):
        @graphopt.register_pass("dce")
        class D(Pass):
            pass
    with pytest.raises(TypeError):
        graphopt.register_pass("t-notpass")(object)


# ------------------------------------------------------------------ running


def test_pass_results_stats_and_fixed_point(registry):
    calls = []

    @graphopt.register_pass("t-drop-one")
    class DropOne(Pass):
        """Removes one Identity per run: needs iterating."""

        def run(self, model, ctx):
            from graphopt.ir import replace_all_uses
            g = model.graph
            for n in g.nodes:
                if n.op == "Identity":
                    replace_all_uses(n.outputs[0], n.inputs[0], g)
                    n.outputs.clear()
                    g.nodes.remove(n)
                    calls.append(1)
                    return PassResult(True, {"dropped": 1})
            calls.append(0)
            return PassResult(False, {"dropped": 0})

    graphopt.register_group("t-grp", ["t-drop-one", "dce"], "test", fixed_point=True, max_iterations=10)
    model = Model.from_onnx(chain_model(3, 2))
    report = PassManager("t-grp").run(model)
    assert calls == [1, 1, 1, 0]  # three changes, then one quiet iteration
    assert model.node_count() == 1
    assert (report.nodes_before, report.nodes_after) == (6, 1)
    first = report.records[0]
    assert first.name == "t-drop-one" and first.changed and first.stats == {"dropped": 1}
    assert first.group == "t-grp" and first.contract == "exact"
    assert report.records[1].stats["nodes_removed"] == 2  # dce
    assert {r.iteration for r in report.records} == {0, 1, 2, 3}
    # the cap
    calls.clear()
    graphopt.register_group("t-grp2", ["t-drop-one"], "test", fixed_point=True, max_iterations=2)
    PassManager("t-grp2").run(Model.from_onnx(chain_model(5, 0)))
    assert calls == [1, 1]
    d = report.as_dict()
    assert d["records"][0]["stats"] == {"dropped": 1}


def test_instruments_see_every_pass(registry, tmp_path):
    from graphopt.instruments import DumpAfter

    events = []

    class Rec(Instrument):
        def before_pipeline(self, model, ctx):
            events.append("start")

        def before_pass(self, p, model, ctx):
            events.append(("before", p.name, model.node_count()))

        def after_pass(self, p, model, ctx, record):
            events.append(("after", p.name, record.nodes_after, record.seconds >= 0))

        def after_pipeline(self, model, ctx, report):
            events.append("end")

    dump = DumpAfter(["dce"], tmp_path / "dump")
    PassManager("dce", PassContext(), [Rec(), dump]).run(Model.from_onnx(chain_model(1, 2)))
    assert events == ["start", ("before", "dce", 4), ("after", "dce", 2, True), "end"]
    dumped = sorted((tmp_path / "dump").iterdir())
    assert [p.name for p in dumped] == ["001-dce.onnx"]
    assert len(onnx.load(dumped[0]).graph.node) == 2


def test_pass_raising_is_named(registry):
    @graphopt.register_pass("t-raise")
    class R(Pass):
        """x"""

        def run(self, model, ctx):
            raise GraphoptError("unsupported thing")

    with pytest.raises(GraphoptError, match="pass 't-raise': unsupported thing"):
        PassManager("t-raise").run(Model.from_onnx(chain_model()))


def test_bad_return_type(registry):
    @graphopt.register_pass("t-ret")
    class R(Pass):
        """x"""

        def run(self, model, ctx):
            return 3

    with pytest.raises(TypeError, match="expected PassResult or bool"):
        PassManager("t-ret").run(Model.from_onnx(chain_model()))


def test_optimize_does_not_mutate_input():
    m = chain_model(1, 2)
    before = m.SerializeToString()
    out = graphopt.optimize(m, "dce")
    assert m.SerializeToString() == before
    assert len(out.graph.node) == 2


def test_declared_budget_reaches_a_plugin_that_never_sets_it(registry):
    """A lossy plugin pass only declares its default budget; the pass manager resolves
    --budget (ctx.budget) into it before run(), and the verifier judges on that."""
    seen = []

    @graphopt.register_pass("t-lossy-scale")
    class Scale(Pass):
        """Scale the output by 1.1 (relative L2 error 0.1)."""

        contract = "lossy"
        budget = {"rel_l2": 0.01}

        def run(self, model, ctx):
            seen.append(dict(self.budget))
            y = model.graph.outputs[0]
            node = y.inputs[0]
            import onnx_graphsurgeon as gs

            mid = gs.Variable("t_mid", dtype=y.dtype)
            node.outputs = [mid]
            k = gs.Constant("t_k", np.array(1.1, dtype=np.float32))
            model.graph.nodes.append(gs.Node("Mul", inputs=[mid, k], outputs=[y]))
            return True

    m = chain_model(0, 0)
    with pytest.raises(graphopt.VerificationError):  # its own default: 0.01 < 0.1
        graphopt.optimize(m, "t-lossy-scale", verify_options={"ahead": False})
    assert seen.pop() == {"rel_l2": 0.01}
    out, report = graphopt.optimize(m, "t-lossy-scale", budget={"rel_l2": 0.2}, return_report=True,
                                    verify_options={"ahead": False})
    assert seen.pop() == {"rel_l2": 0.2}
    assert report.records[0].extra["verify"]["status"] == "ok"
    assert [n.op_type for n in out.graph.node] == ["Relu", "Mul"]


def test_every_way_in_runs_through_the_one_driver(tmp_path, monkeypatch):
    """graphopt.optimize, optimize_file (the CLI's run) and compile's front end all run
    their pipeline through graphopt.driver.run_pipeline; they differ only in its arguments."""
    from graphopt import codegen, driver

    calls = []
    real = driver.run_pipeline

    def spy(model, manager, **kw):
        calls.append((type(manager.instruments[0]).__name__ if manager.instruments else None, manager.ctx.target,
                      kw.get("check", False), kw.get("stubs", False)))
        return real(model, manager, **kw)

    monkeypatch.setattr(driver, "run_pipeline", spy)
    monkeypatch.setattr(graphopt.api, "run_pipeline", spy)  # api binds the name at import
    m = chain_model(1, 2)
    graphopt.optimize(m, "dce")
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    assert main([str(src), "-p", "dce", "-q", "-o", str(tmp_path / "o.onnx")]) == 0
    codegen.front_end(m, "dce", {"x": (2, 4)}, verify=False)
    assert calls == [("VerifyInstrument", "onnx", False, False), ("VerifyInstrument", "onnx", True, True),
                     (None, "tvm", False, False)]


# ------------------------------------------------------------------ plugins


def test_entry_point_discovery(registry, tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "gotest_plugin.py").write_text(
        "import graphopt\n"
        "@graphopt.register_pass('t-from-entry-point')\n"
        "class EP(graphopt.Pass):\n"
        "    '''Registered through an entry point.'''\n"
        "    def run(self, model, ctx):\n"
        "        return False\n"
    )
    dist = pkg / "gotest_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gotest-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[graphopt.passes]\nthe-plugin = gotest_plugin\n")
    # a broken plugin must only warn
    (dist / "entry_points.txt").write_text(
        "[graphopt.passes]\nthe-plugin = gotest_plugin\nbroken = gotest_missing_module\n")
    monkeypatch.syspath_prepend(str(pkg))
    importlib.invalidate_caches()
    pipeline._discovered = False
    assert "t-from-entry-point" in pipeline.list_passes()
    monkeypatch.delitem(sys.modules, "gotest_plugin")


def test_example_pass_python_api(registry, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("custom_pass", None)
    pipeline._PASSES.pop("drop-op", None)
    import custom_pass  # noqa: F401

    from conftest import run_ort

    m = chain_model(3, 0)
    out, report = graphopt.optimize(m, "drop-op", return_report=True)
    assert [n.op_type for n in out.graph.node] == ["Relu"]
    assert report.records[0].stats == {"removed": 3}
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(out, feeds)[0], run_ort(m, feeds)[0])
    # option: only the named op; an Identity producing a graph output from an input stays
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    lone = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert len(graphopt.optimize(lone, "drop-op").graph.node) == 1
    assert len(graphopt.optimize(m, "drop-op(op=Dropout)").graph.node) == 4
    sys.modules.pop("custom_pass", None)


def test_example_pass_via_plugin_flag(registry, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("custom_pass", None)
    pipeline._PASSES.pop("drop-op", None)
    src = tmp_path / "m.onnx"
    onnx.save(chain_model(3, 1), src)
    assert main([str(src), "--plugin", "custom_pass", "-p", "drop-op,clean", "-q"]) == 0
    out = onnx.load(tmp_path / "m.opt.onnx")
    assert [n.op_type for n in out.graph.node] == ["Relu"]
    assert main(["passes", "--plugin", "custom_pass"]) == 0
    assert "drop-op" in capsys.readouterr().out
    assert main([str(src), "--plugin", "no_such_plugin_mod", "-p", "clean"]) == 2
    assert "cannot import plugin 'no_such_plugin_mod'" in capsys.readouterr().err
    sys.modules.pop("custom_pass", None)


def test_listing_functions_and_the_passes_package_are_distinct():
    """graphopt.list_passes() lists; graphopt.passes is the package of built-in passes,
    installed from the top-level passes/ folder (no loading hack rebinds it)."""
    import types

    pipeline.discover()
    assert "dce" in graphopt.list_passes() and "clean" in graphopt.groups()
    assert isinstance(graphopt.passes, types.ModuleType) and graphopt.passes.__name__ == "graphopt.passes"
    assert Path(graphopt.passes.__file__).parent.name == "passes"
    assert graphopt.list_passes()["dce"].__module__.startswith("graphopt.passes.")
