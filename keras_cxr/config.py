"""Typed, frozen configuration sections with strict field checking.

Every recipe section (and the objects that consume them, such as
`keras_cxr.data.Augmentation`) is a frozen dataclass deriving from `Config`.
`Config` checks each field's type on construction, rejects unknown fields
with a suggestion, and converts to and from plain dicts for `recipe.json`
and ``dotted.key=value`` overrides.
"""

import dataclasses
import difflib
import types
import typing

from keras_cxr.errors import FieldError


class ConfigError(FieldError):
    """A recipe or configuration value is wrong; the message names the field."""


def _type_name(tp):
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(value, tp, where):
    """Return `value` converted to `tp`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _check(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            f"{where}: expected {' or '.join(_type_name(a) for a in args)}, "
            f"got {value!r} ({type(value).__name__})"
        )
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected None, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str) and args == (str, Ellipsis):
            value = (value,)  # `extra_train="a.csv"` means one file, not its characters
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return tp.from_dict(value, where=where)
        raise ConfigError(f"{where}: expected a {tp.__name__}(...) section, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"{where}: unsupported annotation {tp!r}")


def unknown_field_error(cls, name, where):
    known = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    prefix = f"{where}." if where else ""
    return ConfigError(
        f"unknown field '{prefix}{name}' in {cls.__name__}{hint} "
        f"(known fields: {', '.join(known)})"
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: subclasses are `@dataclasses.dataclass(frozen=True)`.

    Subclasses may define `validate(self)` for cross-field checks; it runs
    after the per-field type checks and should raise `ConfigError`.
    """

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            checked = _check(value, hints[field.name], f"{type(self).__name__}.{field.name}")
            object.__setattr__(self, field.name, checked)
        self.validate()

    def validate(self):
        pass

    @classmethod
    def from_dict(cls, values, where=""):
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise unknown_field_error(cls, key, where)
        return cls(**values)

    def to_dict(self):
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    def replace(self, **changes):
        for key in changes:
            if key not in {f.name for f in dataclasses.fields(self)}:
                raise unknown_field_error(type(self), key, "")
        return dataclasses.replace(self, **changes)

    @classmethod
    def _field_type(cls, dotted_key):
        """The annotation of `dotted_key`, or a ConfigError naming the bad part."""
        section, prefix = cls, ""
        parts = dotted_key.split(".")
        for i, part in enumerate(parts):
            if part not in {f.name for f in dataclasses.fields(section)}:
                raise unknown_field_error(section, part, prefix.rstrip("."))
            tp = typing.get_type_hints(section)[part]
            if i == len(parts) - 1:
                return tp
            if not (isinstance(tp, type) and issubclass(tp, Config)):
                raise ConfigError(f"{prefix}{part} is a value, not a section: cannot set {dotted_key}")
            section, prefix = tp, f"{prefix}{part}."

    def with_values(self, assignments):
        """Return a copy with every ``{"dotted.key": value}`` set, checked once at the end.

        Checking after all assignments lets one change make another valid
        (e.g. fewer `epochs` together with an earlier `swa.start_epoch`).
        """
        data = self.to_dict()
        for key, value in assignments.items():
            self._field_type(key)
            *sections, last = key.split(".")
            node = data
            for part in sections:
                node = node[part]
            node[last] = value
        return type(self).from_dict(data)
