"""Running `keras-cxr` in-process and checking its one-line errors, for the command tests."""

from click.testing import CliRunner

from keras_cxr.cli import main


def invoke(*args):
    """`keras-cxr ARGS` in this process (arguments may be paths or numbers)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *parts):
    """Exit status 2, no traceback, one ``Error:`` line holding every one of `parts`."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for part in parts:
        assert part in lines[0], (part, lines[0])
