"""Errors that name the arguments they are about, worded for whoever passed them.

A library function names its own arguments (`out_dir`, `resume=True`); the
CLI names its flags (`--out`, `--resume`). A `FieldError` keeps its message
as a template with ``{field}`` placeholders and the library's wording of
each field: `str(error)` reads in the library's terms, and a front end words
the same fields its own way with `error.render(names)`.

Example:

```python
error = FieldError("{out_dir} runs/a holds an unfinished run; continue it with {resume}",
                   out_dir="out_dir", resume="resume=True")
str(error)                                                  # "out_dir runs/a ... with resume=True"
error.render({"out_dir": "--out", "resume": "--resume"})    # "--out runs/a ... with --resume"
```

`ModelFileError` lives here too: the predictor and the readers of exported
files both raise it, and neither imports the other.
"""

import re

_FIELD = re.compile(r"\{(\w+)\}")


class FieldText:
    """A message that names arguments: a template with ``{field}`` places and the library's words for them.

    Args:
        template: the message, with ``{field}`` where a field is named.
            Values already in the message (paths, numbers) are left alone,
            braces included.
        **wording: field -> how the library words it (an argument name, or
            e.g. ``"resume=True"``). Without fields the message is plain.
    """

    def __init__(self, template, **wording):
        self.template = template
        self.wording = wording

    @property
    def fields(self):
        return tuple(self.wording)

    def render(self, names=None):
        """The message with each field worded by `names` (field -> words), else by the library."""
        words = {**self.wording, **{k: v for k, v in (names or {}).items() if k in self.wording}}
        return _FIELD.sub(lambda m: words.get(m.group(1), m.group(0)), self.template)

    def __str__(self):
        return self.render()


class FieldError(FieldText, ValueError):
    """A bad argument or option; `fields` are the arguments it names (see `FieldText`)."""

    def __init__(self, template, **wording):
        FieldText.__init__(self, template, **wording)
        ValueError.__init__(self, self.render())


def listing(items, limit=5, quote=True):
    """The first `limit` items, comma-separated (repr'd when `quote`), then how many more: for messages."""
    items = list(items)
    shown = ", ".join(repr(i) if quote else str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class ModelFileError(ValueError):
    """A model file (a `.keras` file, an exported `.onnx` / `.pt`) cannot be used; the message starts with the file."""
