"""report.html / report.md: present, self-contained, the paper's numbers labelled, figures decodable."""
from __future__ import annotations

import base64
import io
import re

import pytest

from _eval_helpers import STORE_REL, ThresholdPredictor, make_batch, write_run, write_store
from nodulekit.evaluation import EvaluateParams, evaluate
from nodulekit.evaluation.preview import render_preview_png
from nodulekit.evaluation.render import Figure, Paragraph, Section, Table
from nodulekit.evaluation.report import paper_column

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    """The threshold model evaluated as if it were 'msunet' (paper 003 has numbers, Table 9 included)."""
    workdir = tmp_path_factory.mktemp("report")
    write_store(workdir / STORE_REL, make_batch(seed=3))
    runs = [write_run(workdir, f"msunet-fold{f}", f, f"2026-01-0{f + 1}T00:00:00+00:00", model="msunet").name
            for f in (0, 1)]
    return evaluate(workdir, run=runs, report=True, predictor=ThresholdPredictor,
                    params=EvaluateParams(n_boot=50))


def decodes_as_png(data: bytes) -> bool:
    import matplotlib.image as mpimg

    image = mpimg.imread(io.BytesIO(data), format="png")
    return data.startswith(PNG_SIGNATURE) and image.ndim == 3 and min(image.shape[:2]) > 50


def test_report_files_exist(report):
    names = {p.name for p in report.out_dir.iterdir()}
    assert {"metrics.json", "report.html", "report.md", "figures"} <= names
    assert report.report_html == report.out_dir / "report.html"


def test_html_is_self_contained_and_every_figure_decodes(report):
    html = report.report_html.read_text()
    assert "href=" not in html.lower() and "<script" not in html.lower() and "@import" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) >= 4
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert decodes_as_png(base64.b64decode(src.split(",", 1)[1]))


def test_markdown_figures_exist_and_decode(report):
    markdown = report.report_md.read_text()
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", markdown)
    assert {"figures/distributions.png", "figures/gallery.png", "figures/by_characteristic.png",
            "figures/classification_malignancy.png"} <= set(links)
    for link in links:
        assert decodes_as_png((report.out_dir / link).read_bytes())


def test_paper_numbers_beside_this_run_clearly_labelled(report):
    for text in (report.report_html.read_text(), report.report_md.read_text()):
        assert "paper, real LIDC-IDRI" in text and "this run, synthetic spheres" in text
        assert "83.0 ± 13.0" in text and "Table 5 (also Table 8)" in text  # MSU-Net DSC 83.04 +/- 12.96
        assert "Table 9" in text and "Fuzzy margin" in text and "Diameter" in text
        for section in ("Run and data", "Segmentation", "Segmentation by nodule characteristic", "Classification",
                        "Per fold", "Definitions"):
            assert section in text


def test_run_metadata_in_report(report):
    markdown = report.report_md.read_text()
    for item in ("msunet-fold0", "msunet-fold1", "held-out fold 0", "patch 8x16x16 voxels", "1.5 x 0.7 x 0.7 mm",
                 "numpy", "bootstrap"):
        assert item in markdown
    # the fake run's config.toml beside msunet's defaults: its model.threshold is no msunet key, its
    # data.label_column ("label") is the default, so it is folded with the unchanged keys
    assert "| model.threshold | 0.5 | – (not a key of the defaults) |" in markdown
    unchanged = markdown.split("#### The other 1 config keys (unchanged from the paper defaults)")[1]
    assert "| data.label_column | label |" in unchanged.split("## Segmentation")[0]


def test_papers_not_on_lidc_are_labelled_with_their_own_data():
    assert paper_column({"model": "mtnet"}) == "paper, real LIDC-IDRI"
    assert "not LIDC-IDRI" in paper_column({"model": "dgnet"})
    assert "not LIDC-IDRI" in paper_column({"model": "cascade"})
    assert paper_column({"model": "unknown"}).startswith("paper (no reported numbers")


def test_preview_png_lays_out_text_tables_and_figures(report):
    figure = (report.out_dir / "figures" / "distributions.png").read_bytes()
    sections = [Section("A", [Paragraph("some text " * 40), Table(["metric", "value"], [["DI (%)", "80.0 [1, 2]"]])]),
                Section("B", [Figure("d", figure, "caption")])]
    assert decodes_as_png(render_preview_png("title", sections))
