"""Gallery captions fit their panels: long series UIDs are shortened and lines wrapped, so the
three captions of best / median / worst never overlap when drawn."""
from __future__ import annotations

import itertools

import numpy as np

from nodulekit.evaluation import figures
from nodulekit.evaluation.figures import CAPTION_CHARS, GalleryCase, short_caption, short_uid

UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"


def _cases(keys: list[str]) -> list[GalleryCase]:
    image = np.random.default_rng(0).random((8, 24, 24)).astype(np.float32)
    truth = np.zeros(image.shape, dtype=bool)
    truth[3:5, 8:16, 8:16] = True
    return [GalleryCase(title, image, truth, np.roll(truth, 2, axis=2),
                        f"Dice 0.81, HD95 none (empty prediction)\n{key} (fold 0)")
            for title, key in zip(("best Dice", "median Dice", "worst Dice"), keys)]


def test_short_uid_keeps_both_ends():
    assert short_uid(UID) == "1.3.6\u2026666836860"
    assert short_uid("1.2.840.1") == "1.2.840.1"  # short UIDs stay whole
    text = short_caption(f"Dice 0.81, HD95 1.2 mm\n{UID}/3 (fold 0)")
    assert text == "Dice 0.81, HD95 1.2 mm\n1.3.6\u2026666836860/3 (fold 0)"


def test_caption_lines_are_short():
    long = f"Dice 0.81, HD95 none (empty prediction)\n{UID}-3-s12 of patient LIDC-IDRI-0001, a long note here"
    lines = short_caption(long).split("\n")
    assert len(lines) >= 3 and all(len(line) <= CAPTION_CHARS for line in lines)
    assert short_caption("no uid 12.5 mm") == "no uid 12.5 mm"


def test_drawn_captions_do_not_overlap():
    keys = [f"{UID}/3", f"{UID}-3-s12", "1.3.6.1.4.1.14519.5.2.1.6279.6001.303494235102183795724852353824/12"]
    fig = figures._gallery(_cases(keys))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        labels = [ax.xaxis.label for ax in fig.axes]
        assert len(labels) == 3 and all("\u2026" in label.get_text() for label in labels)
        boxes = [label.get_window_extent(renderer) for label in labels]
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), (a, b)
        panels = [ax.get_window_extent(renderer) for ax in fig.axes]
        for box, panel in zip(boxes, panels):  # each caption stays about as wide as its own panel
            assert box.width < 1.15 * panel.width
    finally:
        figures._pyplot().close(fig)
