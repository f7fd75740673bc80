"""Figures of a search: the global architecture and ψ heatmaps.

Pure functions of NumPy arrays and genotypes that return a `matplotlib.figure.Figure`
(built without pyplot, so nothing here touches the global backend or opens a window),
plus `save_figure` (PNG) and `figure_to_image` (an RGB array for TensorBoard).

* `plot_global_architecture`: the paper's Fig. 5, every cell of a global genotype,
  one row per layer, so that a researcher can see how cells change with depth.
* `plot_psi_heatmaps`: ψ [L, C, Op] as layer × operation and layer × connection maps.

Every operation keeps one colour in every figure (`op_color`): pools in greys,
skip-connect green, separable convolutions blues, dilated convolutions orange and red.
"""

from __future__ import annotations

import io
import sys
import zlib
from typing import Sequence

from matplotlib import colors as mcolors
from matplotlib import image as mimage
from matplotlib import patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from dnas_jax import files
from dnas_jax.search import psi_stats
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import ops as ops_lib
from dnas_jax.space import search_space

OP_COLORS = {
  "none": "#f0f0f0",
  "max_pool_3x3": "#525252",
  "avg_pool_3x3": "#a8a8a8",
  "skip_connect": "#31a354",
  "sep_conv_3x3": "#6baed6",
  "sep_conv_5x5": "#08519c",
  "dil_conv_3x3": "#fd8d3c",
  "dil_conv_5x5": "#cb181d",
  "sep_conv_7x7": "#08306b",
  "conv_7x1_1x7": "#54278f",
}
OP_ABBREVIATIONS = {
  "none": "none",
  "max_pool_3x3": "max3",
  "avg_pool_3x3": "avg3",
  "skip_connect": "skip",
  "sep_conv_3x3": "sep3",
  "sep_conv_5x5": "sep5",
  "dil_conv_3x3": "dil3",
  "dil_conv_5x5": "dil5",
  "sep_conv_7x7": "sep7",
  "conv_7x1_1x7": "c7x1",
}
# Any other operation (a user's: `ops.register_op`) takes one of these, chosen by a
# hash of its name: the same colour in every figure and every run.
_EXTRA_COLORS = (
  "#756bb1",
  "#e7298a",
  "#66a61e",
  "#a6761d",
  "#1b9e77",
  "#d95f02",
  "#7570b3",
  "#e6ab02",
)
_REDUCTION_COLOR = "#b2182b"
_REDUCTION_BAND = "#fbe3e3"
_DPI = 100


def op_color(op: str) -> str:
  """The colour of an operation, the same in every figure."""
  if op in OP_COLORS:
    return OP_COLORS[op]
  return _EXTRA_COLORS[zlib.crc32(op.encode()) % len(_EXTRA_COLORS)]


def op_abbreviation(op: str) -> str:
  """A short label for an operation ('sep_conv_3x3' -> 'sep3')."""
  return OP_ABBREVIATIONS.get(op, op[:6])


def connection_names() -> tuple[str, ...]:
  """Names of the 14 connections, e.g. 'n2←s1' (node 2 reads s1)."""
  return tuple(
    f"n{n}←{_input_name(i)}" for n, i in zip(search_space.EDGE_NODE, search_space.EDGE_INPUT)
  )


def _input_name(i: int) -> str:
  return f"s{i}" if i < search_space.NUM_INPUTS else f"n{i - search_space.NUM_INPUTS}"


def _text_color(background: str) -> str:
  r, g, b = mcolors.to_rgb(background)
  return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _layer_labels(reduction: Sequence[bool]) -> list[str]:
  return [f"{k}  reduce" if r else str(k) for k, r in enumerate(reduction)]


def _style_reduction_ticks(ax, reduction: Sequence[bool]) -> None:
  for label, r in zip(ax.get_yticklabels(), reduction):
    if r:
      label.set_color(_REDUCTION_COLOR)
      label.set_fontweight("bold")


def save_figure(fig: Figure, path: str, dpi: float | None = None) -> None:
  """Writes `fig` as a PNG to `path` (atomically, creating its folder) and closes it."""
  files.atomic_write(
    path, lambda f: fig.savefig(f, format="png", dpi=dpi or fig.dpi, facecolor="white")
  )
  close_figure(fig)


def close_figure(fig: Figure) -> None:
  """Releases `fig`: through pyplot when pyplot manages it, else by clearing it."""
  pyplot = sys.modules.get("matplotlib.pyplot")
  if pyplot is not None:
    pyplot.close(fig)
  fig.clear()


def figure_to_image(fig: Figure) -> np.ndarray:
  """Renders `fig` to a uint8 [H, W, 3] RGB array (e.g. for a TensorBoard image)."""
  canvas = fig.canvas
  if not isinstance(canvas, FigureCanvasAgg):
    buf = io.BytesIO()  # Another backend's canvas: render through a PNG instead.
    fig.savefig(buf, format="png", facecolor="white")
    buf.seek(0)
    rgba = mimage.imread(buf, format="png")
    return np.asarray(np.round(rgba[..., :3] * 255), np.uint8)
  canvas.draw()
  return np.array(canvas.buffer_rgba())[..., :3]


def plot_global_architecture(
  genotype: genotype_lib.GlobalGenotype,
  title: str | None = None,
  primitives: Sequence[str] | None = None,
) -> Figure:
  """The whole global architecture at a glance: one row per layer.

  Columns are the kept edges of each cell, grouped by the node they feed (n0..n3);
  each edge is a box coloured by its operation, labelled with its input (s0, s1,
  n0..n2) and the operation's short name. Reduction layers sit on a red band and are
  labelled 'reduce'; a line separates the three stages. A bar on the right counts each
  cell's operations, so that trends with depth (e.g. more skips deep down) stand out;
  a layer whose edges are more than half parameter-free (skip-connects, pools:
  `psi_stats.parameter_free_share`) is marked there with its share, the collapse of
  DARTS-like searches.

  Args:
    genotype: the global genotype, one cell per layer.
    title: optional figure title.
    primitives: the operations to list in the legend (default: those the genotype
      uses); `none` is never listed.

  Returns:
    The figure.
  """
  cells = genotype.cells
  num_layers = len(cells)
  if not num_layers:
    raise ValueError("the genotype has no cells")
  num_nodes = max(len(c.nodes) for c in cells)
  # Slots per node: the most edges any cell gives that node (2 for derived genotypes).
  slots = [
    max((len(c.nodes[n]) for c in cells if n < len(c.nodes)), default=0) for n in range(num_nodes)
  ]
  gap = 0.3
  node_x = np.concatenate([[0.0], np.cumsum([s + gap for s in slots])])[:-1]
  width_units = node_x[-1] + slots[-1]

  used = {op for c in cells for edges in c.nodes for op, _ in edges}
  ops = _legend_ops(used, primitives)

  fig_h = 1.7 + 0.34 * num_layers
  fig = _new_figure(2.5 + 0.85 * width_units + 2.0, fig_h)
  grid = fig.add_gridspec(1, 2, width_ratios=[width_units, 2.3])
  ax = fig.add_subplot(grid[0])
  bar_ax = fig.add_subplot(grid[1], sharey=ax)

  reduction = [c.reduction for c in cells]
  for k in np.flatnonzero(reduction):
    for a in (ax, bar_ax):
      a.axhspan(k - 0.5, k + 0.5, color=_REDUCTION_BAND, zorder=0)
      if k > 0 and not reduction[k - 1]:  # The stage boundary.
        a.axhline(k - 0.5, color=_REDUCTION_COLOR, linewidth=0.8, linestyle=":")
  _draw_edges(ax, cells, node_x)
  ax.set_xlim(-0.1, width_units + 0.1)
  ax.set_ylim(num_layers - 0.5, -0.5)  # Layer 0 (the input side) at the top.
  ax.set_yticks(range(num_layers), _layer_labels(reduction), fontsize=8.5)
  _style_reduction_ticks(ax, reduction)
  ax.set_ylabel("layer (input at top)")
  ax.set_xticks(
    [node_x[n] + slots[n] / 2 for n in range(num_nodes)],
    [f"node n{n}" for n in range(num_nodes)],
    fontsize=9,
  )
  ax.xaxis.tick_top()
  ax.tick_params(axis="both", length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  _draw_op_counts(bar_ax, cells, ops)
  _mark_collapsed(bar_ax, genotype)

  handles = [
    patches.Patch(facecolor=op_color(op), label=f"{op} ({op_abbreviation(op)})") for op in ops
  ]
  fig.legend(
    handles=handles,
    loc="outside lower center",
    ncol=min(len(ops), 7),
    fontsize=8.5,
    frameon=False,
    handlelength=1.2,
    columnspacing=1.0,
  )
  if title:
    fig.suptitle(title, fontsize=11)
  return fig


def _draw_edges(ax, cells: Sequence[genotype_lib.CellGenotype], node_x: np.ndarray) -> None:
  """One rounded box per kept edge: input name in bold, operation abbreviated."""
  for k, cell in enumerate(cells):
    for n, edges in enumerate(cell.nodes):
      for s, (op, inp) in enumerate(edges):
        x, color = node_x[n] + s, op_color(op)
        ax.add_patch(
          patches.FancyBboxPatch(
            (x + 0.06, k - 0.36),
            0.88,
            0.72,
            boxstyle="round,pad=0,rounding_size=0.12",
            facecolor=color,
            edgecolor="white",
            linewidth=0.5,
            zorder=2,
          )
        )
        text_color = _text_color(color)
        ax.text(
          x + 0.14,
          k,
          _input_name(inp),
          ha="left",
          va="center",
          fontsize=8.5,
          fontweight="bold",
          color=text_color,
          zorder=3,
        )
        ax.text(
          x + 0.86,
          k,
          op_abbreviation(op),
          ha="right",
          va="center",
          fontsize=8,
          color=text_color,
          zorder=3,
        )


def _draw_op_counts(ax, cells: Sequence[genotype_lib.CellGenotype], ops: Sequence[str]) -> None:
  """Each cell's operation counts as a stacked horizontal bar."""
  counts = np.array(
    [[sum(op == o for edges in c.nodes for o, _ in edges) for op in ops] for c in cells], float
  )
  left = np.zeros(len(cells))
  for j, op in enumerate(ops):
    ax.barh(
      range(len(cells)),
      counts[:, j],
      left=left,
      height=0.72,
      color=op_color(op),
      edgecolor="white",
      linewidth=0.5,
      zorder=2,
    )
    left += counts[:, j]
  ax.set_xlim(0, max(left.max(), 1))
  ax.set_title("operations per cell", fontsize=9)
  ax.tick_params(axis="y", left=False, labelleft=False)
  ax.tick_params(axis="x", labelsize=8)
  ax.set_xlabel("kept edges", fontsize=8)
  for side in ("top", "right", "left"):
    ax.spines[side].set_visible(False)


COLLAPSE_COLOR = "#d95f02"


def _mark_collapsed(ax, genotype: genotype_lib.GlobalGenotype) -> None:
  """Beside each layer whose parameter-free share exceeds one half: '▲ 75% no params'."""
  shares = psi_stats.parameter_free_share(genotype)
  right = ax.get_xlim()[1]
  for k in np.flatnonzero(shares > 0.5):
    ax.text(
      right,
      k,
      f"▲ {shares[k]:.0%} no params",
      ha="left",
      va="center",
      fontsize=7.5,
      fontweight="bold",
      color=COLLAPSE_COLOR,
      clip_on=False,
      zorder=3,
    )


def _legend_ops(used: set[str], primitives: Sequence[str] | None) -> list[str]:
  if primitives is not None:
    listed = [p for p in primitives if p != "none"]
    return listed + sorted(used - set(listed))
  order = [p for p in ops_lib.registered_ops() if p in used]  # the registry's order
  return order + sorted(used - set(order))


def _check_psi(psi: np.ndarray, primitives: Sequence[str]) -> np.ndarray:
  psi = np.asarray(psi, np.float64)
  expected = (search_space.NUM_CONNECTIONS, len(primitives))
  if psi.ndim != 3 or psi.shape[1:] != expected:
    raise ValueError(
      f"psi has shape {psi.shape}, expected [L, {expected[0]}, "
      f"{expected[1]}] for primitives {list(primitives)}"
    )
  return psi


def label_decimals(values: np.ndarray, least: int = 2, most: int = 6) -> int:
  """Decimals for the labels of a map: enough to resolve a tenth of the map's range
  (0.015 to 0.024 takes 4: '0.0153'), at least `least`, at most `most`."""
  values = np.asarray(values, np.float64)
  span = float(values.max() - values.min()) if values.size else 0.0
  if not np.isfinite(span) or span <= 0:
    return least
  return int(min(most, max(least, np.ceil(-np.log10(span)) + 1)))


def plot_psi_heatmaps(
  psi: np.ndarray, primitives: Sequence[str], title: str | None = None, op_reduce: str = "mean"
) -> Figure:
  """ψ [L, C, Op] as two heatmaps, layer by layer (layer 0 at the top).

  Left: layer × operation, ψ averaged (`op_reduce='mean'`) or summed ('sum') over the
  14 connections, with the values written in to a tenth of the map's range
  (`label_decimals`). Right: layer × connection, ψ summed over operations;
  connections are labelled 'n2←s1' (node 2 reads s1) and grouped by node. Reduction
  layers are labelled in red and outlined.

  Args:
    psi: ψ [L, 14, Op].
    primitives: the Op operation names, in ψ's order.
    title: optional figure title.
    op_reduce: 'mean' or 'sum' over connections, for the left map.

  Returns:
    The figure.
  """
  psi = _check_psi(psi, primitives)
  if op_reduce not in ("mean", "sum"):
    raise ValueError(f"op_reduce={op_reduce!r}; valid values: ['mean', 'sum']")
  num_layers, num_conn, num_ops = psi.shape
  by_op = psi.mean(axis=1) if op_reduce == "mean" else psi.sum(axis=1)
  by_conn = psi.sum(axis=2)
  reduction = search_space.is_reduction(num_layers)

  fig = _new_figure(3.0 + 0.55 * num_ops + 0.5 * num_conn, 2.4 + 0.3 * num_layers)
  grid = fig.add_gridspec(1, 2, width_ratios=[num_ops, num_conn])
  ax_op, ax_conn = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])

  im = ax_op.imshow(by_op, aspect="auto", cmap="viridis", interpolation="nearest")
  fig.colorbar(im, ax=ax_op, shrink=0.9, pad=0.02).set_label(
    f"ψ, {op_reduce} over connections", fontsize=8
  )
  ax_op.set_xticks(
    range(num_ops), list(primitives), rotation=40, ha="right", rotation_mode="anchor", fontsize=8
  )
  norm = im.norm
  decimals = label_decimals(by_op)
  for k in range(num_layers):
    for j in range(num_ops):
      value = by_op[k, j]
      shade = im.cmap(norm(value))
      ax_op.text(
        j,
        k,
        f"{value:.{decimals}f}",
        ha="center",
        va="center",
        fontsize=6.5,
        color="black" if sum(shade[:3]) / 3 > 0.5 else "white",
      )
  ax_op.set_title("layer × operation", fontsize=10)

  im = ax_conn.imshow(by_conn, aspect="auto", cmap="magma", interpolation="nearest")
  fig.colorbar(im, ax=ax_conn, shrink=0.9, pad=0.02).set_label(
    "ψ, summed over operations", fontsize=8
  )
  ax_conn.set_xticks(
    range(num_conn), connection_names(), rotation=60, ha="right", rotation_mode="anchor", fontsize=8
  )
  for n in range(1, search_space.NUM_NODES):
    ax_conn.axvline(search_space.node_edges(n).start - 0.5, color="white", linewidth=1.5)
  ax_conn.set_title("layer × connection", fontsize=10)

  for ax in (ax_op, ax_conn):
    ax.set_yticks(range(num_layers), _layer_labels(reduction), fontsize=8)
    _style_reduction_ticks(ax, reduction)
    ax.tick_params(length=0)
    for k in np.flatnonzero(reduction):
      ax.add_patch(
        patches.Rectangle(
          (-0.5, k - 0.5),
          ax.get_xlim()[1] + 0.5,
          1,
          fill=False,
          edgecolor=_REDUCTION_COLOR,
          linewidth=1.5,
          clip_on=False,
        )
      )
  ax_op.set_ylabel("layer")
  if title:
    fig.suptitle(title, fontsize=11)
  return fig
