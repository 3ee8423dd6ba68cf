"""Read and write LIDC-IDRI CT read files (``LidcReadMessage`` XML).

Format: ../shared/LIDC-FACTS.md section 1. In short: a ``ResponseHeader`` (with the two UID tags
spelled ``SeriesInstanceUid`` and ``StudyInstanceUID``, 1.3), one ``readingSession`` per reader
(1.4), holding ``unblindedReadNodule`` (1.5) and ``nonNodule`` (1.6) elements; ``roi`` contours are
keyed by ``imageSOP_UID`` and ``imageZposition``; ``edgeMap`` points are ``xCoord`` = column,
``yCoord`` = row.

Policies that differ from pylidc (``_populate_db/populate.py``), each recorded as a note:
- ``reader_id`` is the 0-based index of the ``readingSession`` in the file (pylidc keeps none);
- a ``roi`` with <= 1 ``edgeMap`` inside a >= 3 mm nodule is kept (pylidc drops it);
- a characteristic that is 0, blank, not an integer or out of range is left out of the read's
  ``characteristics`` dict (the other ratings are kept; pylidc drops the whole nodule). A block
  that is entirely 0/blank counts as no characteristics;
- a read without characteristics whose contours are all single points is a ``small_nodule``; one
  with real outlines is kept as ``nodule`` with ``characteristics=None``.

Files whose root is not ``LidcReadMessage`` (chest-radiograph ``IdriReadMessage``, 1.2) are not
errors: :func:`parse_lidc_xml` returns a :class:`Skip` naming the reason.

Merging several files of one series and matching contours to slices live in
:mod:`nodulekit.io.read_matching`.
"""
from __future__ import annotations

import contextlib
import hashlib
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nodulekit.atomic import atomic_path
from nodulekit.errors import InputFileError
from nodulekit.io.read_matching import session_hash
from nodulekit.io.reads import CHARACTERISTIC_RANGES, CHARACTERISTICS, Contour, NoduleRead, SeriesReads

NIH_NAMESPACE = "http://www.nih.gov"
XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATION = "http://www.nih.gov http://troll.rad.med.umich.edu/lidc/LidcReadMessage.xsd"
CT_ROOT = "LidcReadMessage"


@dataclass(frozen=True)
class Skip:
    """An input that was deliberately not used: its path and why (shown to the user)."""

    path: str
    reason: str


@dataclass(frozen=True)
class XmlHeader:
    """What discovery needs from a read file: root tag (without namespace) and the two UIDs."""

    path: str
    root_tag: str
    series_uid: str | None
    study_uid: str | None


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _local(tag: str) -> str:
    """``{namespace}name`` -> ``name`` (namespace-agnostic parsing, LIDC-FACTS 1.2)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _namespace(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if isinstance(tag, str) and tag.startswith("{") else ""


def _strip_namespaces(root: ET.Element) -> None:
    for el in root.iter():
        el.tag = _local(el.tag)


def _text(el: ET.Element | None, child: str) -> str | None:
    """Stripped text of the first ``child`` of ``el`` or None when missing or blank."""
    if el is None:
        return None
    node = el.find(child)
    if node is None or node.text is None:
        return None
    value = node.text.strip()
    return value or None


def _header_uid(header: ET.Element | None, name: str) -> str | None:
    """A header UID by exact name, falling back to a case-insensitive match (LIDC-FACTS 1.3)."""
    if header is None:
        return None
    value = _text(header, name)
    if value is not None:
        return value
    for node in header:
        if node.tag.lower() == name.lower() and node.text and node.text.strip():
            return node.text.strip()
    return None


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------

def _sub(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def _fmt_z(z_mm: float) -> str:
    return repr(float(z_mm))


def _write_header(root: ET.Element, reads: SeriesReads) -> None:
    header = _sub(root, "ResponseHeader")
    digest = int(hashlib.sha256(reads.series_uid.encode()).hexdigest()[:8], 16)
    for tag, value in (
        ("Version", "1.8.1"),
        ("MessageId", str(digest % 10_000_000)),
        ("DateRequest", "2000-01-01"),
        ("TimeRequest", "00:00:00"),
        ("RequestingSite", "nodulekit"),
        ("ServicingSite", "nodulekit"),
        ("TaskDescription", "Second unblinded read"),
        ("CtImageFile", "none"),
        ("SeriesInstanceUid", reads.series_uid),
        ("DateService", "2000-01-01"),
        ("TimeService", "00:00:00"),
        ("ResponseDescription", "1 - Reading complete"),
        ("StudyInstanceUID", reads.study_uid or ""),
    ):
        _sub(header, tag, value)


def _write_roi(parent: ET.Element, contour: Contour) -> None:
    roi = _sub(parent, "roi")
    _sub(roi, "imageZposition", _fmt_z(contour.z_mm))
    _sub(roi, "imageSOP_UID", contour.sop_uid or "")
    _sub(roi, "inclusion", "TRUE" if contour.inclusion else "FALSE")
    for x, y in np.asarray(contour.points_xy_px).reshape(-1, 2):
        edge = _sub(roi, "edgeMap")
        _sub(edge, "xCoord", int(x))
        _sub(edge, "yCoord", int(y))


def _write_read(session: ET.Element, read: NoduleRead) -> None:
    if read.kind == "non_nodule":
        if len(read.contours) != 1 or len(read.contours[0].points_xy_px) != 1:
            raise ValueError(f"non-nodule {read.nodule_id!r} must have exactly one one-point contour")
        contour = read.contours[0]
        el = _sub(session, "nonNodule")
        _sub(el, "nonNoduleID", read.nodule_id)
        _sub(el, "imageZposition", _fmt_z(contour.z_mm))
        _sub(el, "imageSOP_UID", contour.sop_uid or "")
        locus = _sub(el, "locus")
        x, y = np.asarray(contour.points_xy_px).reshape(-1, 2)[0]
        _sub(locus, "xCoord", int(x))
        _sub(locus, "yCoord", int(y))
        return
    el = _sub(session, "unblindedReadNodule")
    _sub(el, "noduleID", read.nodule_id)
    if read.kind == "nodule" and read.characteristics:
        chars = _sub(el, "characteristics")
        for name in CHARACTERISTICS:
            if name in read.characteristics:
                _sub(chars, name, int(read.characteristics[name]))
    for contour in read.contours:
        _write_roi(el, contour)


def write_lidc_xml(
    series_reads: SeriesReads,
    path: Path,
    *,
    reader_ids_in_order: list[int | None] | None = None,
) -> None:
    """Write ``series_reads`` as a realistic LIDC CT read file (``LidcReadMessage``).

    One ``readingSession`` per reader id. Session i of the file holds the reads of
    ``reader_ids_in_order[i]``; by default the sessions are ``0 .. max(n_readers, max id + 1) - 1``
    in order, so readers without reads get an empty session. Reads with ``reader_id=None`` go to
    session 0 (or to the id ``None`` when ``reader_ids_in_order`` lists it). Within a session the
    reads keep their order. "nodule" reads get a ``characteristics`` block with the keys present
    (none when ``characteristics`` is None/empty); "small_nodule" reads never get one;
    "non_nodule" reads become ``nonNodule`` with a ``locus`` (exactly one point required).
    Parsing the result gives back the same reads with ``reader_id`` = session index.

    The file is written to a temporary file in the target folder and renamed (atomic).
    """
    path = Path(path)
    if reader_ids_in_order is None:
        ids = [r.reader_id if r.reader_id is not None else 0 for r in series_reads.reads]
        n = max([series_reads.n_readers or 0] + [i + 1 for i in ids])
        order: list[int | None] = list(range(n))
    else:
        order = list(reader_ids_in_order)
        if len(set(order)) != len(order):
            raise ValueError(f"reader_ids_in_order has repeated ids: {order}")
    by_session: dict[int | None, list[NoduleRead]] = {rid: [] for rid in order}
    for read in series_reads.reads:
        rid = read.reader_id
        if rid is None and None not in by_session:
            rid = 0
        if rid not in by_session:
            raise ValueError(f"read {read.nodule_id!r} has reader_id {read.reader_id}, not in {order}")
        by_session[rid].append(read)

    root = ET.Element(CT_ROOT)
    root.set("uid", f"{series_reads.series_uid}.lidcxml")
    root.set("xmlns", NIH_NAMESPACE)
    root.set("xmlns:xsi", XSI_NAMESPACE)
    root.set("xsi:schemaLocation", SCHEMA_LOCATION)
    _write_header(root, series_reads)
    for i, rid in enumerate(order):
        session = _sub(root, "readingSession")
        _sub(session, "annotationVersion", "3.12")
        _sub(session, "servicingRadiologistID", f"anon-{i}")
        for read in by_session[rid]:
            _write_read(session, read)
    ET.indent(root, space="  ")
    data = ET.tostring(root, encoding="UTF-8", xml_declaration=True)

    with atomic_path(path) as tmp_path:
        tmp_path.write_bytes(data + b"\n")


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------

class _Context:
    """Where we are in the file, for error messages and notes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.notes: list[str] = []

    def fail(self, where: str, problem: str) -> InputFileError:
        return InputFileError(self.path, f"{where}: {problem}")

    def note(self, where: str, text: str) -> None:
        self.notes.append(f"{self.path.name}: {where}: {text}")


def _parse_float(ctx: _Context, where: str, text: str | None, name: str) -> float:
    if text is None:
        raise ctx.fail(where, f"missing {name}")
    try:
        return float(text)
    except ValueError:
        raise ctx.fail(where, f"{name} {text!r} is not a number") from None


def _parse_coord(ctx: _Context, where: str, text: str | None, name: str) -> int:
    value = _parse_float(ctx, where, text, name)
    if not value.is_integer():
        ctx.note(where, f"{name} {text!r} is not an integer; rounded")
    return int(round(value))


def _parse_points(ctx: _Context, where: str, parent: ET.Element, tag: str) -> np.ndarray:
    points = [
        (_parse_coord(ctx, where, _text(p, "xCoord"), "xCoord"),
         _parse_coord(ctx, where, _text(p, "yCoord"), "yCoord"))
        for p in parent.findall(tag)
    ]
    return np.asarray(points, dtype=np.int32).reshape(-1, 2)


def _parse_inclusion(ctx: _Context, where: str, text: str | None) -> bool:
    if text is None:
        ctx.note(where, "roi without inclusion; taken as TRUE")
        return True
    value = text.upper()
    if value in ("TRUE", "1", "YES"):
        return True
    if value in ("FALSE", "0", "NO"):
        return False
    raise ctx.fail(where, f"inclusion {text!r} is neither TRUE nor FALSE")


def _parse_characteristics(ctx: _Context, where: str, el: ET.Element | None) -> dict[str, int] | None:
    """The valid ratings of a ``characteristics`` block, or None when there are none.

    0, blank, non-integer and out-of-range values are left out with a note (LIDC-FACTS 1.5).
    """
    if el is None:
        return None
    chars: dict[str, int] = {}
    dropped: list[str] = []
    for name in CHARACTERISTICS:
        text = _text(el, name)
        lo, hi = CHARACTERISTIC_RANGES[name]
        try:
            value = int(text) if text is not None else None
        except ValueError:
            value = None
        if value is not None and lo <= value <= hi:
            chars[name] = value
        else:
            dropped.append(f"{name}={text if text is not None else 'missing'}")
    if not chars:
        ctx.note(where, "characteristics block is all 0/blank; treated as no characteristics")
        return None
    if dropped:
        ctx.note(where, f"invalid characteristics left out: {', '.join(dropped)}")
    return chars


def _parse_nodule(ctx: _Context, session_where: str, reader_id: int, el: ET.Element) -> NoduleRead:
    nodule_id = _text(el, "noduleID") or ""
    where = f"{session_where}, nodule {nodule_id!r}"
    chars = _parse_characteristics(ctx, where, el.find("characteristics"))
    contours: list[Contour] = []
    for j, roi in enumerate(el.findall("roi")):
        roi_where = f"{where}, roi {j}"
        contours.append(Contour(
            z_mm=_parse_float(ctx, roi_where, _text(roi, "imageZposition"), "imageZposition"),
            inclusion=_parse_inclusion(ctx, roi_where, _text(roi, "inclusion")),
            points_xy_px=_parse_points(ctx, roi_where, roi, "edgeMap"),
            sop_uid=_text(roi, "imageSOP_UID"),
        ))
    if not contours:
        ctx.note(where, "nodule without roi")
    all_points = all(len(c.points_xy_px) <= 1 for c in contours)
    if chars is None and all_points:
        kind = "small_nodule"
    else:
        kind = "nodule"
        if chars is None:
            ctx.note(where, "outlined nodule without characteristics; kept as nodule")
        for j, c in enumerate(contours):
            if len(c.points_xy_px) <= 1:
                ctx.note(where, f"roi {j} (z {c.z_mm}) has {len(c.points_xy_px)} edgeMap point(s); "
                         "kept (pylidc drops it)")
    return NoduleRead(reader_id=reader_id, nodule_id=nodule_id, kind=kind, contours=contours,
                      characteristics=chars)


def _parse_non_nodule(ctx: _Context, session_where: str, reader_id: int, el: ET.Element) -> NoduleRead:
    nodule_id = _text(el, "nonNoduleID") or ""
    where = f"{session_where}, nonNodule {nodule_id!r}"
    points = _parse_points(ctx, where, el, "locus")
    if len(points) != 1:
        ctx.note(where, f"{len(points)} locus points (expected 1)")
    contour = Contour(
        z_mm=_parse_float(ctx, where, _text(el, "imageZposition"), "imageZposition"),
        inclusion=True,
        points_xy_px=points,
        sop_uid=_text(el, "imageSOP_UID"),
    )
    return NoduleRead(reader_id=reader_id, nodule_id=nodule_id, kind="non_nodule", contours=[contour])


@contextlib.contextmanager
def xml_errors(path: Path):
    """Turn parser and file errors into one-line :class:`InputFileError` naming ``path``."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError

    try:
        yield
    except ParseError as exc:
        raise InputFileError(path, f"not valid XML: {exc}") from None
    except DefusedXmlException as exc:
        raise InputFileError(path, f"refused unsafe XML: {exc}") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror or exc}") from None


def _load_root(path: Path) -> ET.Element:
    from defusedxml.ElementTree import parse

    with xml_errors(path):
        return parse(str(path)).getroot()


def _not_ct_reason(root_tag: str) -> str:
    local, ns = _local(root_tag), _namespace(root_tag)
    what = " (a chest-radiograph read)" if local == "IdriReadMessage" else ""
    return (f"root element is {local}{f' in namespace {ns}' if ns else ''}{what}, not {CT_ROOT}: "
            "not a CT read file (LIDC-FACTS 1.2)")


def parse_lidc_xml(path: Path) -> SeriesReads | Skip:
    """Parse one LIDC CT read file into :class:`SeriesReads`.

    Returns a :class:`Skip` (path + reason) when the root is not ``LidcReadMessage`` (e.g. an
    ``IdriReadMessage`` radiograph read). Tags are matched without namespace, so files with a
    default namespace, a prefixed namespace or none parse alike. Raises :class:`InputFileError`
    naming the file for malformed XML or a missing ``SeriesInstanceUid``. Non-fatal
    observations go to ``notes`` (see the module docstring for the policies).
    """
    path = Path(path)
    root = _load_root(path)
    if _local(root.tag) != CT_ROOT:
        return Skip(str(path), _not_ct_reason(root.tag))
    _strip_namespaces(root)
    ctx = _Context(path)
    header = root.find("ResponseHeader")
    series_uid = _header_uid(header, "SeriesInstanceUid")
    if series_uid is None:
        raise InputFileError(path, "no ResponseHeader/SeriesInstanceUid")
    study_uid = _header_uid(header, "StudyInstanceUID")

    reads: list[NoduleRead] = []
    sessions = root.findall("readingSession")
    per_session: list[list[NoduleRead]] = []
    for reader_id, session in enumerate(sessions):
        where = f"readingSession {reader_id}"
        session_reads: list[NoduleRead] = []
        for el in session:
            if el.tag == "unblindedReadNodule":
                session_reads.append(_parse_nodule(ctx, where, reader_id, el))
            elif el.tag == "nonNodule":
                session_reads.append(_parse_non_nodule(ctx, where, reader_id, el))
        per_session.append(session_reads)
        reads.extend(session_reads)
    if not sessions:
        ctx.note("file", "no readingSession")
    hashes = Counter(session_hash(s) for s in per_session if s)
    if any(count > 1 for count in hashes.values()):
        ctx.note("file", "some readingSessions have identical reads; kept as separate readers")
    return SeriesReads(series_uid=series_uid, study_uid=study_uid, reads=reads,
                       n_readers=len(sessions), sources=[str(path)], notes=ctx.notes)


def read_xml_header(path: Path) -> XmlHeader:
    """Root tag and UIDs of a read file, reading only as far as the header (fast; for discovery).

    CT files give ``SeriesInstanceUid``/``StudyInstanceUID``; radiograph files
    (``IdriReadMessage``) give their ``CTSeriesInstanceUid`` as ``series_uid``. Raises
    :class:`InputFileError` when the file is not XML up to the end of the header.
    """
    from defusedxml.ElementTree import iterparse

    path = Path(path)
    root_tag = ""
    uids: dict[str, str] = {}
    wanted = {"seriesinstanceuid": "series", "studyinstanceuid": "study",
              "ctseriesinstanceuid": "series"}
    with xml_errors(path):
        for event, el in iterparse(str(path), events=("start", "end")):
            name = _local(el.tag)
            if event == "start":
                if not root_tag:
                    root_tag = name
                continue
            key = wanted.get(name.lower())
            if key and el.text and el.text.strip():
                uids.setdefault(key, el.text.strip())
            if name == "ResponseHeader" or name in ("readingSession", "CXRreadingSession"):
                break
    if not root_tag:
        raise InputFileError(path, "not valid XML: empty document")
    return XmlHeader(str(path), root_tag, uids.get("series"), uids.get("study"))
