"""`keras_cxr.accel.versions`: version parsing and tested ranges."""

from keras_cxr.accel.versions import Patch, parse_version, untested


def test_parse_version_drops_local_and_pre_release_parts():
    assert parse_version("3.15.1") == (3, 15, 1)
    assert parse_version("2.13.0+cpu") == (2, 13, 0)
    assert parse_version("3.16.0rc1") == (3, 16, 0)
    assert parse_version("0.33.0.dev0") == (0, 33, 0)


def test_untested_compares_against_lowest_inclusive_and_below_exclusive():
    patch = Patch("p", "m", (), {"keras": ("3.15", "3.16"), "torch": ("2.13", "2.15")}, "")
    assert untested(patch, {"keras": "3.15.0", "torch": "2.14.1"}) is None
    assert untested(patch, {"keras": "3.15.9", "torch": "2.13.0+cpu"}) is None
    assert untested(patch, {"keras": "3.16.0", "torch": "2.13.0"}) == "tested on keras >=3.15,<3.16; this is keras 3.16.0"
    assert untested(patch, {"keras": "3.12.0", "torch": "2.15.0"}) == (
        "tested on keras >=3.15,<3.16; this is keras 3.12.0; tested on torch >=2.13,<2.15; this is torch 2.15.0")
    assert untested(patch, {"torch": "2.13.0"}) == "keras is not installed"
