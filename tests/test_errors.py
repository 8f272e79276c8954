"""`keras_cxr.errors`: library errors name arguments; the CLI words them as flags."""

import ast
import pathlib
import re

import pytest

from keras_cxr.errors import FieldError, FieldText

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_cxr"


def test_a_field_error_reads_in_library_terms_and_renders_in_a_front_ends():
    error = FieldError("{out_dir} runs/{a}: continue with {resume}", out_dir="out_dir", resume="resume=True")
    assert isinstance(error, ValueError) and error.fields == ("out_dir", "resume")
    assert str(error) == "out_dir runs/{a}: continue with resume=True"  # a brace in a value is left alone
    assert error.render({"out_dir": "--out", "resume": "--resume", "other": "--x"}) == "--out runs/{a}: continue with --resume"
    assert error.render({"out_dir": "--out"}) == "--out runs/{a}: continue with resume=True"
    with pytest.raises(ValueError, match="resume=True"):
        raise error


def test_a_plain_message_has_no_fields():
    assert str(FieldError("bad {thing}")) == "bad {thing}" and FieldError("x").fields == ()
    assert FieldText("see {a}", a="a").render({"a": "--a"}) == "see --a"


def _raised_strings(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for inner in ast.walk(node.exc):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                    yield node.lineno, inner.value


def test_no_library_error_message_names_a_command_line_flag():
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for line, text in _raised_strings(ast.parse(path.read_text())):
            if re.search(r"(^|\s)--[a-z]", text):
                found.append(f"{path.relative_to(PACKAGE)} line {line}: {text!r}")
    assert not found, "\n".join(found)


def test_every_field_the_library_raises_has_a_flag(monkeypatch):
    """Each `{field}` a library message uses is worded by the CLI (else the CLI would print argument names)."""
    from keras_cxr.cli import FLAGS

    used = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and any(k.arg for k in node.keywords):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name.endswith(("Error", "FieldText")):
                    used |= {k.arg for k in node.keywords if k.arg}
    assert used, "no field found: the scan is broken"
    assert used <= set(FLAGS), sorted(used - set(FLAGS))
