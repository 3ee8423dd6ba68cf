"""The fast header walk agrees with pydicom; discovery's headers are reused only while valid."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from _io_helpers import make_hu, write_series
from nodulekit.io import dicom_header
from nodulekit.io.dicom_discovery import discover_series
from nodulekit.io.dicom_series import load_series


def _pydicom_only(monkeypatch) -> None:
    def no_fast(fh):
        raise dicom_header._Fallback

    monkeypatch.setattr(dicom_header, "_read_fast", no_fast)


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("undefined_length", [True, False])
def test_fast_walk_matches_pydicom_with_sequences(tmp_path: Path, monkeypatch, implicit: bool,
                                                   undefined_length: bool) -> None:
    path = write_series(tmp_path, make_hu(1))[0]
    ds = pydicom.dcmread(path)
    ref = Dataset()
    ref.ReferencedSOPInstanceUID, ref.ReferencedSOPClassUID = "1.2.3", "1.2"
    ds.ReferencedImageSequence = [ref, ref]
    inner = Dataset()
    inner.CodeValue = "X"
    item = Dataset()
    item.ConceptNameCodeSequence = [inner]
    item.is_undefined_length_sequence_item = undefined_length
    ds.ProcedureCodeSequence = [item]
    for name in ("ReferencedImageSequence", "ProcedureCodeSequence"):
        ds[name].is_undefined_length = undefined_length
    item["ConceptNameCodeSequence"].is_undefined_length = undefined_length
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit \
        else pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)

    with open(path, "rb") as fh:
        dicom_header._read_fast(fh)  # the fast walk applies (no fallback raised)
    fast = dicom_header.read_file_header(path)
    _pydicom_only(monkeypatch)
    assert dicom_header.read_file_header(path) == fast
    assert fast.slice is not None and fast.slice.pixel_offset is not None


def test_series_loads_the_same_with_and_without_cached_headers(tmp_path: Path, monkeypatch) -> None:
    write_series(tmp_path, make_hu(4))
    series = discover_series(tmp_path).series[0]
    assert series.headers is not None and set(series.headers) == set(series.files)
    cached = load_series(series)
    series.headers = None
    fresh = load_series(series)
    assert (cached.hu_zyx == fresh.hu_zyx).all() and cached.problems == fresh.problems
    # with headers from discovery, load_series reads no header again
    series = discover_series(tmp_path).series[0]
    monkeypatch.setattr("nodulekit.io.dicom_series.read_file_header",
                        lambda path: pytest.fail(f"header of {path} read twice"))
    assert (load_series(series).hu_zyx == cached.hu_zyx).all()
