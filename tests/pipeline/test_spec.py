from __future__ import annotations

from pathlib import Path

import pytest

from nodulekit.pipeline.spec import StageSpec, files_digest


def test_fingerprint_is_stable_and_ignores_dict_order():
    a = StageSpec("crop", 1, {"size": 64, "spacing_mm": 1.0}, upstream=("ingest",))
    b = StageSpec("crop", 1, {"spacing_mm": 1.0, "size": 64}, upstream=("ingest",))
    assert a.fingerprint({"ingest": "abc"}) == b.fingerprint({"ingest": "abc"})


@pytest.mark.parametrize(
    "change",
    [
        dict(params={"size": 32}),
        dict(code_version=2),
        dict(name="augment"),
        dict(input_key="other-files"),
    ],
)
def test_fingerprint_changes_with_each_ingredient(change):
    base = dict(name="crop", code_version=1, params={"size": 64}, upstream=("ingest",))
    before = StageSpec(**base).fingerprint({"ingest": "abc"})
    after = StageSpec(**{**base, **change}).fingerprint({"ingest": "abc"})
    assert before != after


def test_fingerprint_changes_with_upstream():
    spec = StageSpec("crop", 1, {"size": 64}, upstream=("ingest",))
    assert spec.fingerprint({"ingest": "abc"}) != spec.fingerprint({"ingest": "abd"})


def test_fingerprint_needs_every_upstream():
    spec = StageSpec("crop", 1, {}, upstream=("ingest", "consensus-label"))
    with pytest.raises(KeyError):
        spec.fingerprint({"ingest": "abc"})


def test_files_digest_sees_added_and_modified_files(tmp_path: Path):
    (tmp_path / "a.dcm").write_bytes(b"1")
    first = files_digest(list(tmp_path.iterdir()), tmp_path)
    (tmp_path / "b.dcm").write_bytes(b"2")
    second = files_digest(list(tmp_path.iterdir()), tmp_path)
    (tmp_path / "b.dcm").write_bytes(b"22")
    third = files_digest(list(tmp_path.iterdir()), tmp_path)
    assert len({first, second, third}) == 3
