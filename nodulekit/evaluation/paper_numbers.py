"""Each model's numbers as its paper reports them, with the table or section they come from.

Sources: the paper texts in ``shared/papers/`` (000-004). Ratios are stored as fractions
(83.2 % -> 0.832), distances in mm, exactly as printed (no rounding of our own). Metric keys
are those of :mod:`nodulekit.evaluation.tables` (``dice``, ``jaccard``, ``overlap_error``,
``precision``, ``recall``, ``specificity``, ``pixel_accuracy``, ``hd_mm``, ``assd_mm``;
``auc``, ``accuracy``, ``sensitivity``, ``specificity``, ``f1``, ``average_f1``, ``mcc``).

``dataset`` says where the paper measured them: only papers 000, 002 and 003 report on real
LIDC-IDRI; paper 001 reports on a private clinical set (CCF, 7 patients) and paper 004 on
private pathology-confirmed ground-glass nodules, so their numbers are labelled as such and
are not comparable to an LIDC-IDRI run at all.

``n_classes`` says how many classes the result's classification numbers are for: a run is set
beside the result with its own number of classes (:func:`paper_result`). Paper 004 has both: its
binary task 2) (AAH+AIS vs MIA+IAC, with AUC) for 2-class cascade runs and its 3-class task 1)
(AAH+AIS / MIA / IAC, no AUC: the paper computes AUC for 2-class tasks only, Section 3.3) for
3-class runs such as texture on LIDC.
"""
from __future__ import annotations

from dataclasses import dataclass, field

LIDC = "real LIDC-IDRI"
#: Classification key meaning "the run's only classification task" (paper 004's task is a user choice on LIDC).
ANY_TASK = "*"


@dataclass(frozen=True)
class PaperValue:
    """One reported number: value (fraction or mm), where it is printed, and optional SD / n / note."""

    value: float
    source: str
    sd: float | None = None
    n: int | None = None
    note: str = ""


@dataclass(frozen=True)
class PaperResult:
    """What one paper reports for one model (variant): per-metric values and their sources."""

    model: str
    paper: str
    dataset: str
    protocol: str
    variant: str = "full model"
    segmentation: dict[str, PaperValue] = field(default_factory=dict)
    classification: dict[str, dict[str, PaperValue]] = field(default_factory=dict)
    by_characteristic: dict[tuple[str, str], dict[str, PaperValue]] = field(default_factory=dict)
    #: keys of :func:`nodulekit.evaluation.readers.reader_agreement`: model_vs_readers, reader_vs_reader
    reader_agreement: dict[str, PaperValue] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: classes of the tasks in ``classification`` (a run with another number of classes gets none of them)
    n_classes: int = 2
    #: column label in reports when the default (``paper, <dataset>``) does not say enough
    column_label: str = ""

    @property
    def label(self) -> str:
        """Column label in reports: ``paper, real LIDC-IDRI`` (or the paper's own data), or ``column_label``."""
        return self.column_label or f"paper, {self.dataset}"

    def task_values(self, task: str, n_tasks: int, n_classes: int = 2) -> dict[str, PaperValue]:
        """Reported values for classification task ``task`` of a run with ``n_tasks`` tasks, this one
        of ``n_classes`` classes ({} when the paper has none, or has them for another number of classes)."""
        if n_classes != self.n_classes:
            return {}
        if task in self.classification:
            return self.classification[task]
        return self.classification.get(ANY_TASK, {}) if n_tasks == 1 else {}


def _pv(source: str, **values: float) -> dict[str, PaperValue]:
    return {key: PaperValue(value, source) for key, value in values.items()}


_MTNET = "Tang & Zhang 2024, MT-Net, J. Imaging 10:234 (paper 000)"
_DGNET = "Zhang et al. 2024, detection-guided multitask network with STD regularization (paper 001)"
_MTCNN = "Zhai et al. 2020, MT-CNN, IEEE Access 8:180317 (paper 002)"
_MSUNET = "Ni et al. 2022, two-stage 3D MU-Net + 2.5D MSU-Net, QIMS 12:292 (paper 003)"
_CASCADE = "Wang et al. 2021, segmentation-masked 3D cascade, CMIG 88:101814 (paper 004)"
#: Paper 004's 3-class task 1) AAH+AIS / MIA / IAC: its row in Table 2 (data split 1), joint training column (d).
_TASK1 = "Table 2, split 1, task 1) row, model (d)"


def _table6() -> dict[str, PaperValue]:
    """Paper 003 Table 6: mean DSC of the method against the 4 radiologists and between them (the SD is
    over the 4 readers / 6 pairs, not over nodules)."""
    return {"model_vs_readers": PaperValue(0.8290, "Table 6, 'Proposed' AVG", sd=0.0043),
            "reader_vs_reader": PaperValue(0.8251, "Table 6, inter-radiologist AVG", sd=0.0059)}


def _table9() -> dict[tuple[str, str], dict[str, PaperValue]]:
    """Paper 003 Table 9: DSC and OE (mean +/- SD, %) per characteristic category, n nodules."""
    rows = {("margin", "fuzzy"): (174, 81.32, 16.12, 30.57, 15.37), ("margin", "clear"): (216, 83.67, 10.12, 24.88, 12.51),
            ("texture", "non_solid"): (143, 81.89, 14.39, 30.12, 16.21),
            ("texture", "solid"): (247, 83.71, 11.54, 25.86, 12.38),
            ("calcification", "present"): (187, 85.14, 11.65, 23.15, 14.59),
            ("calcification", "absent"): (203, 81.10, 15.18, 31.35, 14.07),
            ("malignancy", "benign"): (173, 82.95, 13.56, 26.91, 14.28),
            ("malignancy", "malignant"): (217, 83.11, 12.49, 27.82, 14.33)}
    return {key: {"dice": PaperValue(d / 100, "Table 9", sd=dsd / 100, n=n),
                  "overlap_error": PaperValue(oe / 100, "Table 9", sd=oesd / 100, n=n)}
            for key, (n, d, dsd, oe, oesd) in rows.items()}


def _msunet_tasks() -> dict[str, dict[str, PaperValue]]:
    """Paper 003 Table 7 (ACC/SEN/SPE) and the AUCs of its 'Multitask classification' text (Figure 5)."""
    values = {"malignancy": (77.8, 83.4, 76.2, 84.3), "margin": (75.6, 81.4, 75.0, 83.2),
              "texture": (85.2, 92.7, 78.2, 90.6), "calcification": (87.1, 92.4, 80.0, 90.1)}
    out = {}
    for task, (acc, sen, spe, auc_) in values.items():
        out[task] = {**_pv("Table 7", accuracy=acc / 100, sensitivity=sen / 100, specificity=spe / 100),
                     "auc": PaperValue(auc_ / 100, "Results, Multitask classification (Figure 5)")}
    out["margin"]["specificity"] = PaperValue(0.750, "Table 7", note="the text says 81.4 %; Table 7 says 75.0 %")
    return out


PAPER_RESULTS: dict[str, tuple[PaperResult, ...]] = {
    "mtnet": (
        PaperResult(
            "mtnet", _MTNET, LIDC, "6:2:2 train/val/test split; 2D 64x64 patches; malignancy 1-2 vs 4-5, 3-25 mm",
            segmentation=_pv("Table 1 (also Table 2)", dice=0.832, jaccard=0.712, pixel_accuracy=0.963,
                             recall=0.925, specificity=0.977),
            classification={"malignancy": _pv("Table 1 (also Table 3)", accuracy=0.919, auc=0.935,
                                              sensitivity=0.814, specificity=0.950)},
            notes=("Segmentation ACC and SPE count pixels of the patch, so they depend on the patch size.",)),
        PaperResult(
            "mtnet", _MTNET, LIDC, "as the full model", variant="without Coarse Seg-net (ablation)",
            segmentation=_pv("Table 5", dice=0.801, jaccard=0.668, pixel_accuracy=0.949, recall=0.934,
                             specificity=0.982),
            classification={"malignancy": _pv("Table 4", accuracy=0.842, auc=0.906, sensitivity=0.801,
                                              specificity=0.925)}),
    ),
    "dgnet": (
        PaperResult(
            "dgnet", _DGNET, "CCF clinical data, 7 patients (not LIDC-IDRI)",
            "pre-trained on LUNA16, fine-tuned on 45 CCF lesions, tested on 11; 2D 128x128 slices",
            segmentation=_pv("Table 2, 'W/o freezing' (= Table 3, 'Backbone + TL + STD')", precision=0.828,
                             recall=0.885, dice=0.814, jaccard=0.744, hd_mm=3.188, assd_mm=0.280),
            notes=("The paper reports no LIDC-IDRI test numbers; its LIDC/LUNA16 data is used for pre-training.",)),
        PaperResult(
            "dgnet", _DGNET, "CCF clinical data, 7 patients (not LIDC-IDRI)", "no transfer learning",
            variant="without transfer learning (ablation)",
            segmentation=_pv("Table 1 (= Table 3, 'Backbone + STD')", precision=0.870, recall=0.827, dice=0.801,
                             jaccard=0.735, hd_mm=2.929, assd_mm=0.211)),
    ),
    "mtcnn": (
        PaperResult(
            "mtcnn", _MTCNN, LIDC, "10 x 10-fold cross-validation; nine 2D views of a 64^3 cube at 1 mm",
            classification={"malignancy": _pv("Section IV.A (Table 1, LIDC-IDRI)", auc=0.9559, sensitivity=0.8774)},
            notes=("The text gives AUC and sensitivity on LIDC-IDRI; Table 1's other LIDC values are not in "
                   "the text we have.",)),
    ),
    "msunet": (
        PaperResult(
            "msunet", _MSUNET, LIDC, "5-fold CV (3 train / 1 validation / 1 test fold); 1,561 nodules, >= 2 readers",
            segmentation={"dice": PaperValue(0.8304, "Table 5 (also Table 8)", sd=0.1296),
                          "overlap_error": PaperValue(0.2742, "Table 5 (also Table 8)", sd=0.1427)},
            classification=_msunet_tasks(), by_characteristic=_table9(), reader_agreement=_table6(),
            notes=("Inter-reader DSC on the same data: 82.51 +/- 0.59 % (Table 6).",)),
    ),
    "munet3d": (
        PaperResult(
            "munet3d", _MSUNET, LIDC, "5-fold CV; 64^3 cubes at 1 mm (localization stage)",
            segmentation={"dice": PaperValue(0.7326, "Table 4", sd=0.1411),
                          "overlap_error": PaperValue(0.4020, "Table 4", sd=0.1541)}),
    ),
    "cascade": (
        PaperResult(
            "cascade", _CASCADE, "private pathology-confirmed ground-glass nodules (not LIDC-IDRI)",
            "70/30 split of 740 nodules; task 2) AAH+AIS vs MIA+IAC, data split 1, model (d) joint training",
            classification={ANY_TASK: {**_pv("Table 2, split 1, (d)", accuracy=0.7822, average_f1=0.7753, auc=0.8129),
                                       "mcc": PaperValue(0.4828, "Table 2, split 1, (d)",
                                                         note="printed as 4.828 x 10^-1")}},
            notes=("Pathology subtypes of ground-glass nodules are a different task from LIDC malignancy ratings.",)),
        PaperResult(
            "cascade", _CASCADE, "private pathology-confirmed ground-glass nodules (not LIDC-IDRI)",
            "70/30 split of 740 nodules; task 1) AAH+AIS vs MIA vs IAC (3 classes), data split 1, model (d) joint "
            "training", n_classes=3,
            column_label="paper 004 task 1, 3 classes, private pathology data (not LIDC-IDRI)",
            classification={ANY_TASK: {**_pv(_TASK1, accuracy=0.5867, average_f1=0.5830),
                                       "mcc": PaperValue(0.3430, _TASK1, note="printed as 3.430 x 10^-1")}},
            notes=("The paper reports no AUC for its 3-class task (AUC only for 2-class tasks, Section 3.3; "
                   "Table 2 prints '-').",
                   "Pathology subtypes of ground-glass nodules (AAH+AIS, MIA, IAC) are a different task from "
                   "LIDC texture or malignancy ratings.")),
    ),
}


def paper_result(model: str, variant: str | None = None, n_classes: int = 2) -> PaperResult | None:
    """The paper's result for ``model`` (its full model unless ``variant`` names an ablation) whose
    classification numbers are for ``n_classes`` classes (2 for runs without a classification task),
    or None when the paper has none."""
    results = [r for r in PAPER_RESULTS.get(model, ()) if r.n_classes == n_classes]
    if variant is None:
        return results[0] if results else None
    return next((r for r in results if r.variant == variant), None)
