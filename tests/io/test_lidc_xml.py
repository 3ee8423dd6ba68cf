from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from _io_helpers import SERIES_UID, STUDY_UID, chars, reads_by_reader, sample_reads, square
from nodulekit.errors import InputFileError
from nodulekit.io.lidc_xml import Skip, parse_lidc_xml, read_xml_header, write_lidc_xml
from nodulekit.io.reads import Contour, NoduleRead, SeriesReads


def _write_and_parse(tmp_path: Path, series_reads: SeriesReads, **kwargs) -> SeriesReads:
    path = tmp_path / "069.xml"
    write_lidc_xml(series_reads, path, **kwargs)
    parsed = parse_lidc_xml(path)
    assert isinstance(parsed, SeriesReads)
    return parsed


def test_round_trip(tmp_path: Path) -> None:
    original = sample_reads()
    parsed = _write_and_parse(tmp_path, original)
    assert parsed.series_uid == SERIES_UID and parsed.study_uid == STUDY_UID
    assert parsed.n_readers == 4  # the empty fourth session is written and counted
    assert reads_by_reader(parsed) == reads_by_reader(original)
    assert [r.kind for r in parsed.reads] == [r.kind for r in original.reads]
    exclusion = parsed.reads[0].contours[2]
    assert exclusion.inclusion is False and exclusion.sop_uid == f"{SERIES_UID}.2"
    assert parsed.reads[2].contours[0].z_mm == 1604.5 and parsed.reads[2].contours[0].sop_uid is None
    assert parsed.sources == [str(tmp_path / "069.xml")]
    assert not list(tmp_path.glob(".*")), "temporary file left behind"


def test_written_file_looks_like_lidc(tmp_path: Path) -> None:
    path = tmp_path / "069.xml"
    write_lidc_xml(sample_reads(), path)
    text = path.read_text()
    assert re.search(r'<LidcReadMessage uid="[^"]+" xmlns="http://www.nih.gov"', text)
    assert "xsi:schemaLocation=\"http://www.nih.gov http://troll.rad.med.umich.edu/lidc/" in text
    header = text[text.index("<ResponseHeader>"):text.index("</ResponseHeader>")]
    tags = re.findall(r"<(\w+)>", header)[1:]
    assert tags == ["Version", "MessageId", "DateRequest", "TimeRequest", "RequestingSite",
                    "ServicingSite", "TaskDescription", "CtImageFile", "SeriesInstanceUid",
                    "DateService", "TimeService", "ResponseDescription", "StudyInstanceUID"]
    assert text.count("<readingSession>") == 4
    small = text[text.index("<noduleID>small-1</noduleID>"):]
    small = small[:small.index("</unblindedReadNodule>")]
    assert "<characteristics>" not in small and small.count("<edgeMap>") == 1
    assert "<locus>" in text and "<nonNoduleID>nn-1</nonNoduleID>" in text


def test_reader_order_and_none_reader(tmp_path: Path) -> None:
    original = sample_reads()
    parsed = _write_and_parse(tmp_path, original, reader_ids_in_order=[2, 0, 1, 3])
    # session index in the file is the new reader id
    assert reads_by_reader(parsed)[0] == reads_by_reader(original)[2]
    assert reads_by_reader(parsed)[1] == reads_by_reader(original)[0]
    anonymous = SeriesReads(SERIES_UID, None, [
        NoduleRead(None, "a", "nodule", [Contour(1.0, True, square(1, 1))], chars(2)),
        NoduleRead(None, "b", "nodule", [Contour(2.0, True, square(3, 1))], chars(2)),
    ])
    parsed = _write_and_parse(tmp_path, anonymous)
    assert parsed.n_readers == 1 and {r.reader_id for r in parsed.reads} == {0}


NS_VARIANTS = {
    "default": ('<LidcReadMessage uid="1" xmlns="http://www.nih.gov" '
                'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">', "</LidcReadMessage>", ""),
    "none": ('<LidcReadMessage uid="1">', "</LidcReadMessage>", ""),
    "prefixed": ('<nih:LidcReadMessage xmlns:nih="http://www.nih.gov">', "</nih:LidcReadMessage>", "nih:"),
}


def _minimal_xml(variant: str) -> str:
    open_root, close_root, p = NS_VARIANTS[variant]
    body = f"""
  <{p}ResponseHeader><{p}SeriesInstanceUid> 1.2.3 </{p}SeriesInstanceUid>
    <{p}StudyInstanceUID>4.5.6</{p}StudyInstanceUID></{p}ResponseHeader>
  <{p}readingSession><{p}annotationVersion>3.12</{p}annotationVersion>
    <{p}unblindedReadNodule><{p}noduleID>1</{p}noduleID>
      <{p}characteristics><{p}subtlety>5</{p}subtlety><{p}internalStructure>1</{p}internalStructure>
        <{p}calcification>6</{p}calcification><{p}sphericity>4</{p}sphericity><{p}margin>4</{p}margin>
        <{p}lobulation>0</{p}lobulation><{p}spiculation></{p}spiculation><{p}texture>5</{p}texture>
        <{p}malignancy>4</{p}malignancy></{p}characteristics>
      <{p}roi><{p}imageZposition>1487.5</{p}imageZposition><{p}imageSOP_UID>9.1</{p}imageSOP_UID>
        <{p}inclusion>TRUE</{p}inclusion>
        <{p}edgeMap><{p}xCoord>322</{p}xCoord><{p}yCoord>303</{p}yCoord></{p}edgeMap>
        <{p}edgeMap><{p}xCoord>323</{p}xCoord><{p}yCoord>304</{p}yCoord></{p}edgeMap></{p}roi>
      <{p}roi><{p}imageZposition>1488.75</{p}imageZposition><{p}imageSOP_UID>9.2</{p}imageSOP_UID>
        <{p}inclusion>FALSE</{p}inclusion>
        <{p}edgeMap><{p}xCoord>322</{p}xCoord><{p}yCoord>303</{p}yCoord></{p}edgeMap></{p}roi>
    </{p}unblindedReadNodule>
  </{p}readingSession>
  <{p}readingSession><{p}annotationVersion>3.12</{p}annotationVersion>
    <{p}unblindedReadNodule><{p}noduleID>s</{p}noduleID>
      <{p}characteristics><{p}subtlety>0</{p}subtlety></{p}characteristics>
      <{p}roi><{p}imageZposition>1490</{p}imageZposition><{p}imageSOP_UID>9.3</{p}imageSOP_UID>
        <{p}inclusion>TRUE</{p}inclusion>
        <{p}edgeMap><{p}xCoord>10</{p}xCoord><{p}yCoord>11</{p}yCoord></{p}edgeMap></{p}roi>
    </{p}unblindedReadNodule>
    <{p}nonNodule><{p}nonNoduleID>n</{p}nonNoduleID><{p}imageZposition>-5.5</{p}imageZposition>
      <{p}imageSOP_UID>9.4</{p}imageSOP_UID><{p}locus><{p}xCoord>1</{p}xCoord><{p}yCoord>2</{p}yCoord>
      </{p}locus></{p}nonNodule>
  </{p}readingSession>
"""
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{open_root}{body}{close_root}\n'


@pytest.mark.parametrize("variant", sorted(NS_VARIANTS))
def test_namespaces_and_lidc_quirks(tmp_path: Path, variant: str) -> None:
    path = tmp_path / "x.xml"
    path.write_text(_minimal_xml(variant))
    parsed = parse_lidc_xml(path)
    assert isinstance(parsed, SeriesReads)
    assert parsed.series_uid == "1.2.3" and parsed.study_uid == "4.5.6" and parsed.n_readers == 2
    nodule, small, non = parsed.reads
    assert (nodule.reader_id, nodule.kind, small.reader_id, small.kind, non.kind) == (
        0, "nodule", 1, "small_nodule", "non_nodule")
    # 0 / blank ratings are left out, the others kept; a note says so
    assert nodule.characteristics == {"subtlety": 5, "internalStructure": 1, "calcification": 6,
                                      "sphericity": 4, "margin": 4, "texture": 5, "malignancy": 4}
    assert any("lobulation=0" in n and "spiculation=missing" in n for n in parsed.notes)
    # the one-point roi of a >= 3 mm nodule is kept (pylidc drops it), with a note
    assert len(nodule.contours) == 2 and nodule.contours[1].points_xy_px.shape == (1, 2)
    assert nodule.contours[1].inclusion is False
    assert any("roi 1" in n and "kept" in n for n in parsed.notes)
    np.testing.assert_array_equal(nodule.contours[0].points_xy_px, [[322, 303], [323, 304]])
    assert nodule.contours[0].points_xy_px.dtype == np.int32
    # an all-zero block on a point read is a small nodule without characteristics
    assert small.characteristics is None and small.contours[0].z_mm == 1490.0
    assert non.contours[0].sop_uid == "9.4" and non.contours[0].points_xy_px.tolist() == [[1, 2]]
    assert read_xml_header(path).series_uid == "1.2.3"


def test_idri_radiograph_read_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "cxr.xml"
    path.write_text('<?xml version="1.0"?><IdriReadMessage xmlns="http://www.nih.gov/idri">'
                    "<ResponseHeader><CTSeriesInstanceUid>1.2</CTSeriesInstanceUid></ResponseHeader>"
                    "<CXRreadingSession><unblindedRead/></CXRreadingSession></IdriReadMessage>")
    result = parse_lidc_xml(path)
    assert isinstance(result, Skip)
    assert result.path == str(path) and "IdriReadMessage" in result.reason
    assert "http://www.nih.gov/idri" in result.reason
    assert read_xml_header(path).root_tag == "IdriReadMessage"


@pytest.mark.parametrize("content", ["<LidcReadMessage><ResponseHeader><SeriesInstanceUid>1",
                                     "this is not xml", ""])
def test_malformed_xml_names_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(content)
    with pytest.raises(InputFileError) as info:
        parse_lidc_xml(path)
    assert str(path) in str(info.value) and "not valid XML" in str(info.value)


def test_truncated_real_file(tmp_path: Path) -> None:
    path = tmp_path / "069.xml"
    write_lidc_xml(sample_reads(), path)
    path.write_bytes(path.read_bytes()[:-200])
    assert read_xml_header(path).series_uid == SERIES_UID  # header alone is still fine
    with pytest.raises(InputFileError, match="not valid XML"):
        parse_lidc_xml(path)


def test_entity_expansion_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.xml"
    path.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
                    "<LidcReadMessage>&a;</LidcReadMessage>")
    with pytest.raises(InputFileError):
        parse_lidc_xml(path)
