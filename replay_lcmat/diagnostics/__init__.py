"""Diagnostics: look at a memory and at the quantities LCMat matches.

- Memory grids (paper Fig. 7): :func:`plot_memory_grid` of :class:`MemorySet` s, loaded with
  :func:`selection_images`, :func:`load_condensed`, :func:`load_class_memory` or built from
  tensors; :func:`memory_grid` returns the pixels.
- Bound terms (Fig. 2): :func:`bound_terms` for one subset, :func:`compare_subsets` for several,
  :func:`bound_markdown`, :func:`write_bound_csv`, :func:`plot_bound_terms`.
- Loss contours (Fig. 1b): :func:`loss_surface`, :func:`plot_loss_contours`.
- Curvature spectrum (Fig. 6): :func:`curvature_spectrum`, :func:`plot_curvature_spectrum`.

Pictures are written with ``matplotlib.figure.Figure`` (no pyplot state).
"""

from replay_lcmat.diagnostics.bound_report import (
    FIELDS,
    bound_markdown,
    compare_subsets,
    plot_bound_terms,
    write_bound_csv,
)
from replay_lcmat.diagnostics.bounds import TERMS, bound_terms, mean_last_layer_terms
from replay_lcmat.diagnostics.contours import (
    LossSurface,
    filter_normalized_direction,
    loss_surface,
    mean_loss,
    plot_loss_contours,
)
from replay_lcmat.diagnostics.grids import MemoryGrid, memory_grid, plot_memory_grid
from replay_lcmat.diagnostics.sources import (
    MemorySet,
    denormalize,
    load_class_memory,
    load_condensed,
    selection_images,
)
from replay_lcmat.diagnostics.spectrum import (
    curvature_spectrum,
    plot_curvature_spectrum,
    top_k_share,
)

__all__ = [
    "FIELDS",
    "TERMS",
    "LossSurface",
    "MemoryGrid",
    "MemorySet",
    "bound_markdown",
    "bound_terms",
    "compare_subsets",
    "curvature_spectrum",
    "denormalize",
    "filter_normalized_direction",
    "load_class_memory",
    "load_condensed",
    "loss_surface",
    "mean_last_layer_terms",
    "mean_loss",
    "memory_grid",
    "plot_bound_terms",
    "plot_curvature_spectrum",
    "plot_loss_contours",
    "plot_memory_grid",
    "selection_images",
    "top_k_share",
    "write_bound_csv",
]
