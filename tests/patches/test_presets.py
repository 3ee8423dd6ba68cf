"""Geometry presets per model and option overrides."""
from __future__ import annotations

import pytest

from nodulekit.errors import NodulekitError
from nodulekit.patches.presets import PRESETS, parse_spacing, resolve_geometry

EXPECTED = {  # preset: (geometry, patch shape, spacing z,y,x mm, HU window, normalize, cohort)
    "mtnet": ("2d", (64, 64), None, (-1000, 400), "01", "mtnet"),
    "dgnet": ("2d", (128, 128), None, (-1000, 400), "01", "luna16"),
    "mtcnn": ("views9", (9, 64, 64), (1, 1, 1), (-1000, 400), "01", "mtcnn"),
    "mtcnn-cube": ("3d", (64, 64, 64), (1, 1, 1), (-1000, 400), "01", "mtcnn"),
    "msunet": ("2.5d", (4, 64, 64), (1, 1, 1), (-1000, 500), "01", "msunet"),
    "munet3d": ("3d", (64, 64, 64), (1, 1, 1), (-1000, 500), "01", "msunet"),
    "cascade": ("3d", (32, 32, 32), (1.0, 0.7, 0.7), (-1024, 400), "pm1", "luna16"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_preset_matches_its_paper(name):
    g = resolve_geometry(name)
    assert (g.geometry, g.patch_shape, g.spacing_zyx_mm, g.hu_window, g.normalize, g.cohort) == EXPECTED[name]
    assert g.source.startswith("paper 00")
    assert set(PRESETS) == set(EXPECTED)


def test_options_override_the_preset_and_change_the_fingerprint():
    base = resolve_geometry("mtnet")
    g = resolve_geometry("mtnet", size=96, spacing_mm="0.5", hu_window=(-1200, 600), normalize="pm1", cohort="all")
    assert g.patch_shape == (96, 96) and g.spacing_zyx_mm == (0.5, 0.5, 0.5) and g.normalize == "pm1"
    assert g.fingerprint_params() != base.fingerprint_params()
    assert resolve_geometry("cascade", spacing_mm="1,0.7,0.7").fingerprint_params() == \
        resolve_geometry("cascade").fingerprint_params()
    cube = resolve_geometry("mtnet", geometry="3d")  # native spacing has no meaning in 3d: 1 mm
    assert cube.patch_shape == (64, 64, 64) and cube.spacing_zyx_mm == (1.0, 1.0, 1.0)
    # fields that do not apply to the geometry do not enter the fingerprint
    assert resolve_geometry("mtcnn-cube").fingerprint_params()["views_sampling"] is None
    assert resolve_geometry("dgnet", empty_ratio=2).fingerprint_params()["empty_ratio"] == 2
    assert resolve_geometry("dgnet", geometry="3d").empty_ratio == 0


def test_spacing_parsing():
    assert parse_spacing("1") == (1.0, 1.0, 1.0)
    assert parse_spacing("1.0,0.7,0.7") == parse_spacing("1.0 0.7 0.7") == (1.0, 0.7, 0.7)
    assert parse_spacing("native") is None and parse_spacing(None) == "preset"
    with pytest.raises(NodulekitError, match="--spacing-mm"):
        parse_spacing("1,2")


@pytest.mark.parametrize("options, match", [
    ({"geometry": "4d"}, "--geometry"), ({"size": 1}, "--size"), ({"normalize": "z"}, "--normalize"),
    ({"hu_window": (400, -1000)}, "--hu-window"), ({"spacing_mm": "native"}, "native spacing is 2d only"),
    ({"empty_ratio": 1.0}, "--empty-ratio"), ({"views_sampling": "x"}, "--views-sampling"),
    ({"spacing_mm": (1.0, 0.0, 1.0)}, "positive"),
])
def test_bad_options_are_one_line_errors(options, match):
    with pytest.raises(NodulekitError, match=match):
        resolve_geometry("mtcnn", **options)
    with pytest.raises(NodulekitError, match="--for"):
        resolve_geometry("unet")
