"""Which library versions each patch is tested on, and the one warning for skipped patches.

A patch replaces private Keras / keras-hub / torch code, which may change in
any release. Each `Patch` names the versions its tests ran on; on any other
version, or when its probe finds the target changed, `keras_cxr.accel.enable`
skips it and Keras's own code runs (slower, same results).
"""

import dataclasses
import importlib.metadata
import re
import warnings


class AccelWarning(UserWarning):
    """Some acceleration patches were skipped; Keras's own code runs for them."""


@dataclasses.dataclass(frozen=True)
class Patch:
    """One mechanism of `keras_cxr.accel`.

    Attributes:
        name: short name, e.g. `"conv"`.
        module: the module that implements it, with `probe()`, `install()`
            and `uninstall()`.
        targets: what it replaces, as dotted paths (documentation and status).
        tested: distribution name -> `(lowest, below)`: the versions its tests
            passed on, `lowest <= version < below` (`"3.15"` < `"3.15.1"` < `"3.16"`).
        summary: one line on what it does.
    """

    name: str
    module: str
    targets: tuple[str, ...]
    tested: dict
    summary: str


def parse_version(text):
    """`"3.15.1"` -> `(3, 15, 1)`; local and pre-release suffixes (`+cpu`, `rc1`, `.dev0`) are dropped."""
    numbers = []
    for part in str(text).split("+")[0].split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)


def installed_version(distribution):
    """The installed version string of `distribution`, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pad(version, width=3):
    return version + (0,) * (width - len(version))


def untested(patch, versions=None):
    """Why `patch` is outside its tested versions, or None when every version is inside.

    Args:
        patch: a `Patch`.
        versions: distribution -> version string; None reads the installed ones.
    """
    problems = []
    for distribution, (lowest, below) in patch.tested.items():
        version = (versions or {}).get(distribution) if versions is not None else installed_version(distribution)
        if version is None:
            problems.append(f"{distribution} is not installed")
            continue
        found = _pad(parse_version(version))
        if not _pad(parse_version(lowest)) <= found < _pad(parse_version(below)):
            problems.append(f"tested on {distribution} >={lowest},<{below}; this is {distribution} {version}")
    return "; ".join(problems) or None


def warn_skipped(skipped):
    """One warning naming every skipped patch and why (`skipped`: name -> reason)."""
    if not skipped:
        return
    by_reason = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    details = "; ".join(f"{', '.join(names)} ({reason})" for reason, names in by_reason.items())
    warnings.warn(
        f"keras-cxr acceleration skipped {len(skipped)} patch(es), Keras's own code runs for them "
        f"(slower, same results): {details}",
        AccelWarning,
        stacklevel=3,
    )
