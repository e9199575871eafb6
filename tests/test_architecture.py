"""Where things live: each kind of change needs one place, and the code keeps that shape.

- a method is one formula and one row of ``methods.METHODS``; the engine asks the method what it
  needs, so a new method runs without touching the engine, and the README's table, ``--method``'s
  help and the tests' lists come from that table;
- an option shared by two commands is declared once in ``camcli/options.py``, so ``explain`` and
  ``audit`` cannot drift; the audit's threshold options come from ``audit.checks.THRESHOLDS``;
- the record's top-level keys are assembled in one function, ``pipeline.build_record``;
- no function is longer than 80 lines, and no code outside ``methods.py`` compares a method's
  name.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from camcli import methods, options
from camcli.audit.checks import THRESHOLDS
from camcli.methods import METHODS, ChannelScoringMethod, Method, Needs, get_method

PACKAGE = Path(__file__).resolve().parents[1] / "camcli"
README = PACKAGE.parent / "README.md"


def _commands():
    import typer.main

    from camcli.cli import app

    group = typer.main.get_command(app)
    return {name: group.commands[name] for name in group.commands}


def _params(command) -> dict:
    return {p.name: p for p in command.params}


# --------------------------------------------------------------------------- methods


def test_a_new_gradient_method_is_one_function_and_one_row(monkeypatch, make_loaded):
    import keras

    from camcli.engine import Engine, Targets

    def absgrad(activations, gradients):  # weights: mean |gradient| per channel
        return activations * np.abs(gradients).mean(axis=(1, 2))[:, None, None, :]

    monkeypatch.setitem(METHODS, "absgradcam", Method("absgradcam", absgrad, "a test"))
    inputs = keras.Input((6, 6, 2))
    act = keras.layers.Activation("linear", name="act")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(act)
    dense = keras.layers.Dense(2, use_bias=False, name="head")
    model = keras.Model(inputs, dense(pooled))
    dense.set_weights([np.array([[1.0, -1.0], [-2.0, 0.5]], np.float32)])
    images = np.random.default_rng(3).uniform(0.1, 1.0, (2, 6, 6, 2)).astype(np.float32)
    out = Engine(make_loaded(model, "act"), Targets(classes=(0,)), get_method("absgradcam"),
                 compiled=False).run(images)
    # d(score_0)/dA = kernel[:, 0] / 36 everywhere: weights |1|/36 and |-2|/36.
    raw = images[..., 0] * 1.0 + images[..., 1] * 2.0
    np.testing.assert_allclose(out.cams[:, 0], raw / raw.max(axis=(1, 2), keepdims=True),
                               atol=1e-5)


def test_a_channel_scoring_method_must_say_which_scores_it_needs():
    with pytest.raises(ValueError, match="must declare the channel scores"):
        ChannelScoringMethod("newcam", methods.ablationcam, "a test")
    declared = ChannelScoringMethod("newcam", methods.ablationcam, "a test",
                                    Needs.ABLATION_SCORES)
    assert declared.scores_channels and not declared.needs_gradients


def test_method_options_live_on_the_method():
    scorecam = get_method("scorecam", chunk_size=5, channels=3)
    assert (scorecam.chunk_size, scorecam.channels) == (5, 3)
    assert scorecam.recorded_options() == {"scorecam_channels": 3}
    assert get_method("ablationcam", chunk_size=5, channels=3).chunk_size == 5
    assert get_method("gradcam", chunk_size=5, channels=3) is METHODS["gradcam"]
    assert METHODS["scorecam"].channels is None  # the table's own rows are never changed


def test_method_help_and_readme_come_from_the_one_table():
    help_text = _params(_commands()["explain"])["method"].help
    assert help_text == f"CAM method: {', '.join(METHODS)}."
    section = README.read_text().split("## Methods", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| `")]
    listed = [re.match(r"\| `([^`]+)`", line).group(1) for line in table[: len(METHODS)]]
    assert listed == list(METHODS)
    for line, method in zip(table, METHODS.values(), strict=False):
        assert method.reference.split(" 20")[0] in line, (line, method.reference)


# --------------------------------------------------------------------------- options


SHARED = options.MODEL + options.RUN + (options.TOP_K, options.MAX_PIXELS) + tuple(
    s for s in options.RENDER if s.name != "max_overlay_side"
)


@pytest.mark.parametrize("spec", SHARED, ids=lambda s: s.name)
def test_explain_and_audit_declare_shared_options_identically(spec):
    commands = _commands()
    explain, audit = _params(commands["explain"])[spec.name], _params(commands["audit"])[spec.name]
    assert explain.opts == audit.opts == list(spec.flags)
    assert explain.default == audit.default
    if spec is not options.TOP_K:  # the audit adds what k means for its check
        assert explain.help == audit.help == spec.help


def test_audit_threshold_options_are_generated_from_the_checks_table():
    audit = _params(_commands()["audit"])
    for threshold in THRESHOLDS:
        assert audit[threshold.name].opts == [threshold.option]
        assert threshold.help in audit[threshold.name].help


def test_an_option_cannot_be_declared_twice_on_a_command():
    import typer

    with pytest.raises(TypeError, match="declared twice"):
        options.command(typer.Typer(), options.MODEL, options.MODEL)(lambda **kw: None)


# --------------------------------------------------------------------------- the code's shape


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def test_no_function_is_longer_than_80_lines():
    long = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} "
            f"({node.end_lineno - node.lineno + 1} lines)"
            for path, node in _functions() if node.end_lineno - node.lineno + 1 > 80]
    assert not long, long


def test_no_method_name_is_compared_outside_methods_py():
    names = set(METHODS)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "methods.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for value in [node.left, *node.comparators]:
                    if isinstance(value, ast.Constant) and value.value in names:
                        found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, found


def test_the_record_is_assembled_in_one_function():
    from camcli.outputs import SCHEMA_VERSION
    from camcli.pipeline import build_record

    record = build_record({"camcli_version": "x"}, "f" * 16, {"path": "a"}, [], [])
    assert record == {"schema_version": SCHEMA_VERSION, "camcli_version": "x",
                      "settings_fingerprint": "f" * 16, "input": {"path": "a"},
                      "predictions": [], "explanations": []}
    def assembles_a_record(function) -> bool:  # a dict literal with the record's own keys
        return any(isinstance(n, ast.Dict) and {"explanations", "settings_fingerprint"} <= {
            k.value for k in n.keys if isinstance(k, ast.Constant)} for n in ast.walk(function))

    builders = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path, node in _functions()
                if assembles_a_record(node)]
    assert builders == [next(f"pipeline.py:{n.lineno}" for p, n in _functions()
                             if n.name == "build_record")]


def test_every_json_line_is_assembled_in_one_function():
    """Done, skipped and failed ``--json`` lines come from ``pipeline.build_line``: one shape."""
    from camcli.pipeline import build_line

    failed = build_line("a.png", error="no such file")
    assert failed["input"] == {"path": "a.png", "width": None, "height": None, "sha256": None}
    assert build_line("a.png", skipped=True)["input"] == failed["input"]

    def assembles_a_line(function) -> bool:  # a dict literal with the line's own keys
        return any(isinstance(n, ast.Dict) and {"ok", "skipped", "error", "files"} <= {
            k.value for k in n.keys if isinstance(k, ast.Constant)} for n in ast.walk(function))

    # the Ray row carries an ImageResult (not a line) from a worker to the driver, which
    # makes the line with build_line as a local run does
    builders = sorted(f"{path.relative_to(PACKAGE)}:{node.name}" for path, node in _functions()
                      if assembles_a_line(node))
    assert builders == ["distributed/ray.py:_row", "pipeline.py:build_line"]


def test_output_options_and_cli_render_options_match():
    from camcli.pipeline import OutputOptions

    fields = {f.name: f.default for f in dataclasses.fields(OutputOptions)}
    for spec in options.RENDER + options.OUTPUTS:
        assert spec.name in fields, spec.name
        assert spec.default == fields[spec.name], spec.name
