"""report.md and report.html of one evaluation, built from its metrics.json content.

Sections: how to read it; run and data; segmentation (table beside the paper's numbers, Dice
and HD distributions, best / median / worst cases); per-characteristic breakdown (paper 003
Table 9); reader agreement (paper 003 Table 6, when the store has reader masks); classification
per task (table beside the paper, ROC, confusion matrix, calibration); per fold; definitions.
Columns are labelled "this run, <dataset>" and "paper, real LIDC-IDRI" (or the paper's own data
where it did not use LIDC-IDRI).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nodulekit.evaluation import figures as fig
from nodulekit.evaluation.paper_numbers import PAPER_RESULTS, PaperResult, PaperValue, paper_result
from nodulekit.evaluation.render import Figure, Paragraph, Section, Table, write_report_files
from nodulekit.evaluation.run_config import config_value_text, flatten, model_defaults, split_config
from nodulekit.labels.cohorts import class_names_for_column

SEG_LABELS = {"dice": "DI (Dice)", "jaccard": "JA (Jaccard, IoU)", "overlap_error": "OE (overlap error = 1 - JA)",
              "precision": "precision", "recall": "recall (sensitivity)", "specificity": "SPE (voxel specificity)",
              "pixel_accuracy": "pixel ACC (voxel accuracy)", "hd_mm": "HD (Hausdorff)", "hd95_mm": "HD95",
              "assd_mm": "ASSD"}
CLASS_LABELS = {"auc": "AUC", "accuracy": "ACC (accuracy)", "sensitivity": "SEN (sensitivity)",
                "specificity": "SPE (specificity)", "f1": "F1 (class 1)", "average_f1": "macro F1", "mcc": "MCC"}
_UNITLESS = ("mcc",)
#: Names of the classes 0 and 1 of the LIDC characteristic tasks (labels of consensus-label's cohorts).
CLASS_NAMES = {"malignancy": ("benign", "malignant"), "margin": ("fuzzy margin", "clear margin"),
               "texture": ("non-/part-solid", "solid"), "calcification": ("calcified", "no calcification")}


def class_names(task: str, n_classes: int, column: str | None = None) -> list[str]:
    """Display names of a task's classes: ``0 benign`` / ``1 malignant`` for known binary tasks
    (:data:`CLASS_NAMES`), else the names of the truth column's label spec when it has them
    (``0 non-solid`` / ``1 part-solid`` / ``2 solid`` for ``label_luna16_texture``), else numbers."""
    names = CLASS_NAMES.get(task) if n_classes == 2 else None
    names = names or (class_names_for_column(column, n_classes) if column else None)
    if names and len(names) == n_classes:
        return [f"{k} {name}" for k, name in enumerate(names)]
    return [str(k) for k in range(n_classes)]


def _unit(key: str) -> str:
    return "mm" if key.endswith("_mm") else "" if key in _UNITLESS else "%"


def fmt_value(key: str, value: float | None) -> str:
    """A value as shown: ratios in %, distances in mm, MCC as is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    unit = _unit(key)
    return f"{100 * value:.1f}" if unit == "%" else f"{value:.2f}" if unit == "mm" else f"{value:.3f}"


def fmt_entry(key: str, entry: Mapping[str, Any] | None) -> str:
    """``estimate [low, high]`` of a CI entry; the reason when undefined."""
    if not entry or entry.get("estimate") is None:
        return "n/a" + (f" ({entry['note']})" if entry and entry.get("note") else "")
    text = fmt_value(key, entry["estimate"])
    if entry.get("low") is not None:
        text += f" [{fmt_value(key, entry['low'])}, {fmt_value(key, entry['high'])}]"
    if entry.get("n_inf"):
        text += f"\n({entry['n_inf']} missed: empty prediction)"
    return text


def fmt_paper(key: str, value: PaperValue | None, with_source: bool = True) -> str:
    """``value ± sd`` of a reported number, with its source (table / section) and note."""
    if value is None:
        return "–"
    text = fmt_value(key, value.value)
    if value.sd is not None:
        text += f" ± {fmt_value(key, value.sd)}"
    if with_source:
        text += f"\n({value.source})"
    return text + (f"\nnote: {value.note}" if value.note else "")


def _rows_beside_paper(summary: Mapping[str, Any], values: Mapping[str, PaperValue],
                       segmentation: bool) -> list[list[str]]:
    """[metric, this run, paper] rows; the paper's source is written once (last row) when all share it."""
    sources = {v.source for k, v in values.items() if k in summary["metrics"]}
    shared = len(sources) == 1
    rows = [[metric_label(k, segmentation), fmt_entry(k, e), fmt_paper(k, values.get(k), not shared)]
            for k, e in summary["metrics"].items()]
    if shared:
        rows.append(["source of the paper's values", "", sources.pop()])
    return rows


def metric_label(key: str, segmentation: bool) -> str:
    """Display name with unit, e.g. ``DI (Dice) (%)``, ``HD95 (mm)``, ``SPE (specificity) (%)``."""
    label = (SEG_LABELS if segmentation else CLASS_LABELS).get(key, key)
    unit = _unit(key)
    return f"{label} ({unit})" if unit else label


def run_column(metrics: Mapping[str, Any]) -> str:
    return f"this run, {metrics['data']['dataset']}"


def _n_classes(metrics: Mapping[str, Any]) -> int:
    """The number of classes of the run's classification tasks (2 when it has none, or when they differ)."""
    counts = {int(t["n_classes"]) for t in (metrics.get("tasks") or {}).values()}
    return counts.pop() if len(counts) == 1 else 2


def _paper(metrics: Mapping[str, Any]) -> PaperResult | None:
    """The paper's result to set beside this run: the model's, for the run's number of classes."""
    return paper_result(metrics["model"], n_classes=_n_classes(metrics))


def _paper_column(paper: PaperResult | None, metrics: Mapping[str, Any] | None = None) -> str:
    if paper:
        return paper.label
    if metrics and PAPER_RESULTS.get(metrics["model"]):
        return f"paper (no reported numbers for {_n_classes(metrics)} classes)"
    return "paper (no reported numbers for this model)"


def paper_column(metrics: Mapping[str, Any]) -> str:
    """Label of the paper column for this evaluation's model and number of classes."""
    return _paper_column(_paper(metrics), metrics)


def segmentation_rows(metrics: Mapping[str, Any], summary: Mapping[str, Any]) -> list[list[str]]:
    paper = _paper(metrics)
    return _rows_beside_paper(summary, paper.segmentation if paper else {}, True)


def classification_rows(metrics: Mapping[str, Any], task: str, summary: Mapping[str, Any]) -> list[list[str]]:
    paper = _paper(metrics)
    n_classes = int(summary.get("n_classes", 2))
    values = paper.task_values(task, len(metrics["tasks"]), n_classes) if paper else {}
    return _rows_beside_paper(summary, values, False)


def aggregate_lines(metrics: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(group, metric, this run, paper) rows of the aggregate tables (the CLI prints these)."""
    out = []
    aggregate = metrics["aggregate"]
    if "segmentation" in aggregate:
        out += [("segmentation", *row) for row in segmentation_rows(metrics, aggregate["segmentation"])]
    for task, summary in aggregate["classification"].items():
        out += [(task, *row) for row in classification_rows(metrics, task, summary)]
    if metrics.get("reader_agreement"):
        out += [("reader agreement", *row) for row in reader_agreement_tables(metrics)[0].rows]
    return out


def _overview(metrics: Mapping[str, Any]) -> Section:
    data, settings = metrics["data"], metrics["settings"]
    folds = ", ".join(str(f) for f in metrics["folds"])
    paper = _paper(metrics)
    rows = metrics["rows"]
    n_empty = sum(1 for r in rows if r.get("truth_voxels") == 0)
    empty = f" ({n_empty} of them without a nodule: empty slices)" if n_empty else ""
    text = (f"This report scores the model '{metrics['model']}' on the held-out fold(s) {folds} of the patch store "
            f"below: {data['n_patches']} patches{empty} of {data['n_nodules']} nodules from {data['n_patients']} "
            f"patients that the model did not train on. Every number is computed from the model's predictions "
            f"(stored in predictions.h5) against the consensus masks and labels of the patch store.")
    ci = (f"Brackets are {int(100 * settings['ci'])}% confidence intervals: percentile bootstrap with "
          f"{settings['n_boot']} resamples of patients (all patches of a drawn patient together), seed "
          f"{settings['seed']}. Cross-validation folds are pooled for the main tables; the per-fold table is below.")
    if data["n_patients"] < 20:
        ci += f" With {data['n_patients']} patients the intervals are rough (few distinct resamples)."
    compare = (f"The column '{run_column(metrics)}' is this evaluation. The column '{_paper_column(paper, metrics)}' "
               "repeats what the paper reports, with the table it comes from. It was measured on other data, "
               "with the paper's own split and preprocessing, so it is a reference point, not a target that this "
               "data can be expected to reach.")
    blocks: list[Any] = [Paragraph(text), Paragraph(ci), Paragraph(compare)]
    if paper:
        blocks.append(Paragraph(f"Paper: {paper.paper}. Protocol: {paper.protocol}. " + " ".join(paper.notes),
                                small=True))
    return Section("How to read this report", blocks)


def config_tables(model: str, config: Mapping[str, Any]) -> list[Any]:
    """The run's config.toml: first the keys that differ from the model's defaults (the paper's
    settings, :mod:`nodulekit.evaluation.run_config`) with the default and its source, then the
    other keys in a collapsed table; one table of every key when the model is not registered."""
    defaults = model_defaults(model)
    if defaults is None:
        return [Table(["training configuration (config.toml of the first run)"],
                      [[f"{key} = {config_value_text(value)}"] for key, value in flatten(config).items()])]
    changed, same = split_config(config, defaults)
    where = f"nodulekit/models/configs/{model}.toml"
    blocks: list[Any] = []
    if changed:
        rows = [[c.key, config_value_text(c.value),
                 config_value_text(c.default) if c.in_defaults else "– (not a key of the defaults)",
                 c.source or "–"] for c in changed]
        caption = (f"Training configuration (config.toml of the first run): the {len(changed)} key(s) whose value "
                   f"differs from the model's defaults ({where} over the engine defaults; the paper's settings, "
                   "each with the section it comes from), e.g. set with --set, --config, --epochs or --max-steps. "
                   "data.stores is chosen when training starts and is not counted.")
        blocks.append(Table(["config key (changed from the paper defaults)", "this run", "default",
                             "source of the default"], rows, caption))
    else:
        blocks.append(Paragraph(f"Training configuration (config.toml of the first run): every key has the model's "
                                f"default ({where}: the paper's settings)."))
    if same:
        blocks.append(Table(["config key", "value"], [[k, config_value_text(v)] for k, v in same.items()],
                            collapsed=f"The other {len(same)} config keys (unchanged from the paper defaults)"))
    return blocks


def _stages_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    """For msunet: whether the chain of paper 003's two stages was scored, or the refinement stage alone."""
    if metrics["model"] != "msunet":
        return []
    coarse = [str((r.get("meta") or {}).get("coarse_run") or "") for r in metrics["runs"]]
    if all(coarse):
        return [["stages", "two (paper 003): each held-out nodule's cube through munet3d run(s) "
                           f"{', '.join(coarse)}; its coarse mask picks the slices MSU-Net refines, and each slab "
                           "is scored on the assembled 3D mask"]]
    return [["stages", "MSU-Net alone on the held-out slabs (the refinement stage, Table 5); to score the chain, "
                       "evaluate with --coarse-run <munet3d run of the same fold>"]]


def _run_section(metrics: Mapping[str, Any]) -> Section:
    data = metrics["data"]
    spacing = data["spacing_zyx_mm"]
    rows = [["model", metrics["model"]],
            ["run(s)", "\n".join(f"{r['name']} (held-out fold {', '.join(map(str, r['folds']))}; "
                                 f"run key {r['run_key']})" for r in metrics["runs"])],
            *_stages_rows(metrics),
            ["data set", data["dataset"]],
            ["patch store", f"{data['store']}\npreset {data['preset']}, geometry {data['geometry']}, "
                            f"patch {'x'.join(map(str, data['patch_shape']))} voxels"],
            ["voxel spacing (z, y, x)", "the source scan's, per patch" if spacing is None
             else " x ".join(f"{s:g}" for s in spacing) + " mm"],
            ["cohort / labels", "; ".join(f"{t}: column {v['truth_column']}" for t, v in metrics["tasks"].items())
             or "segmentation only"],
            ["folds evaluated", ", ".join(map(str, metrics["folds"])) + (" (cross-validation, pooled)"
                                                                         if len(metrics["folds"]) > 1 else "")],
            ["thresholds", "; ".join(
                ([f"mask: P(foreground) >= {metrics['settings']['seg_threshold']}"] if metrics["has_segmentation"]
                 else []) +
                ([f"class: P(class 1) >= {metrics['settings']['class_threshold']} (argmax for > 2 classes)"]
                 if metrics["tasks"] else []))],
            ["versions", ", ".join(f"{k} {v}" for k, v in metrics["versions"].items())],
            ["evaluated (UTC)", metrics["created_utc"]]]
    blocks: list[Any] = [Table(["item", "value"], rows)]
    config = metrics["runs"][0].get("config") or {}
    if config:
        blocks += config_tables(metrics["model"], config)
    return Section("Run and data", blocks)


def _segmentation_section(metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                          gallery: Sequence[fig.GalleryCase]) -> Section:
    summary = metrics["aggregate"]["segmentation"]
    header = ["metric", run_column(metrics), _paper_column(_paper(metrics), metrics)]
    caption = (f"Mean over {summary['n']} nodule patches ({summary['n_patients']} patients); mask = P >= "
               f"{metrics['settings']['seg_threshold']}. Distances are in mm with the patch spacing; HD, HD95 and "
               "ASSD average the patches whose prediction is not empty. Paper values: mean (± SD where printed).")
    blocks: list[Any] = [Table(header, segmentation_rows(metrics, summary), caption)]
    empty = summary.get("empty_patches")
    if empty:
        rate = empty["false_positive_rate"]
        blocks.append(Paragraph(f"Patches without a nodule ({rate['n']}, not in the table): "
                                f"{fmt_entry('fp', rate)} % have at least one predicted voxel (false-positive patches)."))
    nodule_rows = [r for r in rows if (r.get("truth_voxels") or 0) > 0]
    values = {k: fig.finite_or_nan([r.get(k) for r in nodule_rows]) for k in ("dice", "hd_mm", "hd95_mm")}
    blocks.append(Figure("distributions", fig.distributions_figure(values["dice"], values["hd_mm"], values["hd95_mm"]),
                         "Per-patch Dice, HD and HD95 (dashed: median). Patches whose prediction is empty have no "
                         "distance and are counted in the titles."))
    if gallery:
        blocks.append(Figure("gallery", fig.gallery_figure(gallery),
                             "Best, median and worst patch by Dice: CT with the ground-truth (green) and predicted "
                             "(red) contours; for 3D patches the slice with the largest ground-truth area."))
    return Section("Segmentation", blocks)


def _breakdown_section(metrics: Mapping[str, Any]) -> Section | None:
    entries = metrics.get("by_characteristic") or []
    if not entries:
        return None
    paper = _paper(metrics)
    paper_values = paper.by_characteristic if paper else {}
    rows = []
    for e in entries:
        pv = paper_values.get((e["characteristic"], e["category"]), {})
        paper_text = (f"{fmt_paper('dice', pv['dice'])} [n={pv['dice'].n}]" if pv else "–")
        rows.append([e["label"], f"{e['n']} ({e['n_patients']} patients)",
                     fmt_entry("dice", e["metrics"]["dice"]), fmt_entry("overlap_error", e["metrics"]["overlap_error"]),
                     fmt_entry("hd95_mm", e["metrics"]["hd95_mm"]),
                     paper_text if not pv else paper_text + "\nOE " + fmt_value("overlap_error", pv["overlap_error"].value)])
    header = ["category (readers' aggregated rating)", "patches", f"DI (%) — {run_column(metrics)}", "OE (%)",
              "HD95 (mm)", f"DI (%) — {_paper_column(paper, metrics)}"]
    figure = fig.breakdown_figure(entries, {k: v["dice"].value for k, v in paper_values.items()},
                                  run_column(metrics), _paper_column(paper, metrics))
    caption = ("Mean (95% CI) over the nodule patches of each category, as paper 003 Table 9; ratings 1-5 "
               "(calcification 1-6) are the readers' aggregate. Diameter bins are nodulekit's addition (no paper "
               "values). Small categories have wide intervals.")
    return Section("Segmentation by nodule characteristic", [
        Table(header, rows, caption),
        Figure("by_characteristic", figure, "Mean Dice per category with 95% CI (blue) and the paper's mean "
                                            "(orange diamond) where Table 9 has the category.")])


def _count_text(entry: Mapping[str, Any] | None) -> str:
    """How many nodules (and patches, where a nodule has several: 2D / 2.5D) a reader-agreement cell averages."""
    if not entry:
        return ""
    nodules = entry.get("n_nodules", entry["n"])
    return f"\n{nodules} nodules" if nodules == entry["n"] else f"\n{entry['n']} patches, {nodules} nodules"


def reader_agreement_tables(metrics: Mapping[str, Any]) -> list[Table]:
    """The summary beside paper 003's Table 6 and the per-reader table in Table 6's layout."""
    agreement = metrics["reader_agreement"]
    paper = _paper(metrics)
    values = paper.reader_agreement if paper else {}

    def cell(entry: Mapping[str, Any] | None) -> str:
        return fmt_entry("dice", entry) + _count_text(entry)

    difference = "–"
    if "model_vs_readers" in values and "reader_vs_reader" in values:
        gap = values["model_vs_readers"].value - values["reader_vs_reader"].value
        difference = ("+" if gap > 0 else "") + fmt_value("dice", gap) + "\n(Table 6, the two averages above)"
    summary = [["model vs readers (%): each patch's mean over its reads", cell(agreement["model_vs_readers"]),
                fmt_paper("dice", values.get("model_vs_readers"))],
               ["reader vs reader (%): each patch's mean over its pairs of reads",
                cell(agreement["reader_vs_reader"]), fmt_paper("dice", values.get("reader_vs_reader"))],
               ["model minus reader vs reader (%), the same patches", cell(agreement["model_minus_reader_vs_reader"]),
                difference]]
    caption = (f"Dice (%) per patch as in the segmentation table (a patch is a nodule in cube stores, a slice or "
               f"slab in 2D / 2.5D stores), mean with {int(100 * metrics['settings']['ci'])}% patient-bootstrap CI; "
               f"{agreement['n_nodules']} nodules have reader masks, {agreement['n_nodules_single_read']} of them a "
               "single read (counted in the model row only). Paper values: mean ± SD over its 4 readers (model) or "
               "6 reader pairs, not over nodules.")
    readers = agreement["readers"]
    per_reader = [[name, *("–" if other == name else cell(_pair(agreement, name, other)) for other in readers),
                   cell(agreement["reader_vs_others"][name])] for name in readers]
    per_reader.append(["model", *(cell(agreement["model_vs_reader"][name]) for name in readers),
                       cell(agreement["model_vs_readers"])])
    layout = ("Paper 003 Table 6 layout: reader pairs, and the model against each reader. R1 is each nodule's "
              "first read, R2 its second, ... (LIDC readers are anonymous and their order differs between "
              "scans, so a column pools reads, not one radiologist). Last column: against the nodule's other "
              "reads / all its reads.")
    return [Table(["", run_column(metrics), _paper_column(paper, metrics)], summary, caption),
            Table(["Dice (%)", *readers, "mean"], per_reader, layout)]


def _pair(agreement: Mapping[str, Any], a: str, b: str) -> Mapping[str, Any] | None:
    pairs = agreement["reader_pairs"]
    return pairs.get(f"{a}-{b}") or pairs.get(f"{b}-{a}")


def _reader_section(metrics: Mapping[str, Any]) -> Section | None:
    if not metrics.get("reader_agreement"):
        return None
    explain = ("How the model's masks agree with each radiologist's own outline, beside how the radiologists agree "
               "with each other on the same nodules (paper 003 Table 6): a model whose Dice against the readers "
               "matches the readers' Dice against each other agrees with a reader about as well as another reader "
               "does.")
    return Section("Reader agreement", [Paragraph(explain), *reader_agreement_tables(metrics)])


def _task_arrays(rows: Sequence[Mapping[str, Any]], task: str) -> tuple[np.ndarray, np.ndarray]:
    labelled = [r for r in rows if r.get(f"{task}_truth") is not None]
    return (np.array([r[f"{task}_truth"] for r in labelled], dtype=np.int64),
            np.array([r[f"{task}_prob"] for r in labelled], dtype=np.float64))


def _classification_section(metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Section | None:
    tasks = metrics["aggregate"]["classification"]
    if not tasks:
        return None
    header = ["metric", run_column(metrics), _paper_column(_paper(metrics), metrics)]
    threshold = metrics["settings"]["class_threshold"]
    blocks: list[Any] = []
    for task, summary in tasks.items():
        names = class_names(task, summary["n_classes"], metrics["tasks"][task].get("truth_column"))
        counts = ", ".join(f"{name}: {n}" for name, n in zip(names, summary["class_counts"]))
        caption = (f"Task '{task}' (truth column {metrics['tasks'][task]['truth_column']}): {summary['n']} labelled "
                   f"patches of {summary['n_patients']} patients ({counts}). Metrics pool all folds; decision "
                   f"P(class 1) >= {threshold} (argmax for more classes).")
        blocks.append(Table(header, classification_rows(metrics, task, summary), caption))
        labels, scores = _task_arrays(rows, task)
        if not labels.size:
            continue
        auc_legend = "AUC " + fmt_entry("auc", summary["metrics"]["auc"]).split("\n")[0] + " %"
        png = fig.task_figure(task, labels, scores, auc_legend, np.array(summary["confusion_matrix"]), names,
                              f"P >= {threshold}" if summary["n_classes"] == 2 else "argmax")
        blocks.append(Figure(f"classification_{task}", png,
                             f"'{task}' on the held-out patches. Left: ROC curve, AUC with 95% CI. Middle: confusion "
                             "matrix, each cell with its share of the truth row. Right (binary tasks): calibration, "
                             "the observed fraction of class 1 in each probability bin against the mean predicted "
                             "probability (on the diagonal = calibrated), and the histogram of predicted "
                             "probabilities."))
    return Section("Classification", blocks)


def _fold_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    """(label, metric key, task or None) of the per-fold table."""
    out: list[tuple[str, str, str | None]] = []
    if "segmentation" in metrics["aggregate"]:
        out += [(metric_label(k, True), k, None) for k in ("dice", "jaccard", "hd95_mm", "assd_mm")]
    for task in metrics["aggregate"]["classification"]:
        out += [(f"{task}: {metric_label(k, False)}", k, task) for k in ("auc", "accuracy", "sensitivity", "specificity")]
    return out


def _entry(summary: Mapping[str, Any], key: str, task: str | None) -> Mapping[str, Any] | None:
    part = summary.get("segmentation") if task is None else summary["classification"].get(task)
    return (part or {}).get("metrics", {}).get(key)


def _fold_section(metrics: Mapping[str, Any]) -> Section:
    folds = metrics["per_fold"]
    header = ["metric", *[f"fold {f}" for f in folds], "all folds pooled"]
    rows = [[label, *[fmt_entry(key, _entry(s, key, task)) for s in folds.values()],
             fmt_entry(key, _entry(metrics["aggregate"], key, task))] for label, key, task in _fold_metrics(metrics)]
    return Section("Per fold", [Table(header, rows, "Each fold's held-out patches alone (CIs by patient within the "
                                                    "fold), and all folds pooled (the main tables).")])


def _definitions() -> Section:
    return Section("Definitions", [Paragraph(
        "DI = 2TP/(2TP+FP+FN); JA = TP/(TP+FP+FN); OE = 1 - JA; precision = TP/(TP+FP); recall = TP/(TP+FN); "
        "SPE = TN/(TN+FP) and pixel ACC = (TP+TN)/all voxels (both depend on the patch size). HD = max of the two "
        "directed boundary distances; HD95 = max of the two directed 95th percentiles (MONAI's definition); "
        "ASSD = mean of all boundary-to-boundary distances of both boundaries pooled (paper 001 eq. 13). Boundary "
        "= foreground voxels with a face-connected background neighbour. Classification: AUC (Mann-Whitney), "
        "ACC, SEN = TP/(TP+FN), SPE = TN/(TN+FP), F1 = 2TP/(2TP+FP+FN), MCC (Matthews). Formulas and empty-mask "
        "rules: docs/metrics.md; this report: docs/evaluation.md.", small=True)])


def build_sections(metrics: Mapping[str, Any], gallery: Sequence[fig.GalleryCase] = ()) -> list[Section]:
    rows = metrics["rows"]
    sections = [_overview(metrics), _run_section(metrics)]
    if "segmentation" in metrics["aggregate"]:
        sections.append(_segmentation_section(metrics, rows, gallery))
        breakdown = _breakdown_section(metrics)
        if breakdown:
            sections.append(breakdown)
        readers = _reader_section(metrics)
        if readers:
            sections.append(readers)
    classification = _classification_section(metrics, rows)
    if classification:
        sections.append(classification)
    return [*sections, _fold_section(metrics), _definitions()]


def report_title(metrics: Mapping[str, Any]) -> str:
    return f"nodulekit evaluation: {metrics['model']} on {metrics['data']['dataset']}"


def write_report(out_dir: Path, metrics: Mapping[str, Any], gallery: Sequence[fig.GalleryCase] = (),
                 preview: bool = False) -> tuple[Path, Path]:
    """Write report.md (+ figures/) and report.html into ``out_dir`` (and report-preview.png when
    ``preview``: the whole report as one image, for machines without a browser); returns md, html."""
    title, sections = report_title(metrics), build_sections(metrics, gallery)
    paths = write_report_files(out_dir, title, sections)
    if preview:
        from nodulekit.evaluation.preview import write_preview_png

        write_preview_png(Path(out_dir) / "report-preview.png", title, sections)
    return paths
