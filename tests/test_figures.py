"""Tests for dnas_jax.search.figures: every figure renders to a valid, non-blank PNG."""

from matplotlib import backend_bases
from matplotlib import colors as mcolors
from matplotlib import image as mimage
from matplotlib.figure import Figure
import numpy as np
import pytest

from dnas_jax.search import figures as plots
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import search_space


def _random_psi(num_layers, primitives, seed=0):
  rng = np.random.default_rng(seed)
  return rng.dirichlet(np.ones(len(primitives)), size=(num_layers, 14))


def _check_png(path, min_height=200, min_width=400):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  pixels = mimage.imread(str(path))
  assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
  assert pixels.shape[0] >= min_height and pixels.shape[1] >= min_width
  assert pixels[..., :3].std() > 0.05  # Not blank.
  return pixels


def test_op_colors_are_distinct_and_stable():
  ops = search_space.DARTS_PRIMITIVES
  rgbs = {mcolors.to_rgb(plots.op_color(op)) for op in ops}
  assert len(rgbs) == len(ops)
  assert plots.op_color("new_op") == plots.op_color("new_op")
  assert len({plots.op_abbreviation(op) for op in ops}) == len(ops)


def test_connection_names():
  names = plots.connection_names()
  assert len(names) == search_space.NUM_CONNECTIONS
  assert names[:3] == ("n0←s0", "n0←s1", "n1←s0")
  assert names[-1] == "n3←n2"


@pytest.mark.parametrize("num_layers", [8, 20])
def test_global_architecture_png(tmp_path, num_layers):
  psi = _random_psi(num_layers, search_space.PRIMITIVES, seed=num_layers)
  genotype = genotype_lib.derive_genotype(psi, search_space.PRIMITIVES)
  fig = plots.plot_global_architecture(genotype, title=f"L={num_layers}")
  assert isinstance(fig, Figure)
  path = tmp_path / "sub" / "arch.png"
  plots.save_figure(fig, str(path))
  pixels = _check_png(path)
  # One row per layer: the figure grows with depth.
  assert pixels.shape[0] > 25 * num_layers
  assert not fig.axes  # Closed (cleared) after saving.


@pytest.mark.parametrize("num_layers", [8, 20])
def test_psi_heatmaps_png(tmp_path, num_layers):
  psi = _random_psi(num_layers, search_space.PRIMITIVES, seed=num_layers)
  path = tmp_path / "psi.png"
  plots.save_figure(plots.plot_psi_heatmaps(psi, search_space.PRIMITIVES, title="ψ"), str(path))
  _check_png(path)


def test_psi_heatmaps_darts_primitives_and_sum(tmp_path):
  primitives = search_space.DARTS_PRIMITIVES
  psi = _random_psi(8, primitives)
  fig = plots.plot_psi_heatmaps(psi, primitives, op_reduce="sum")
  labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
  assert labels == list(primitives)
  plots.save_figure(fig, str(tmp_path / "psi.png"))
  _check_png(tmp_path / "psi.png")


def test_psi_shape_errors():
  with pytest.raises(ValueError, match="expected"):
    plots.plot_psi_heatmaps(np.zeros((8, 13, 7)), search_space.PRIMITIVES)
  with pytest.raises(ValueError, match="op_reduce"):
    plots.plot_psi_heatmaps(np.zeros((8, 14, 7)), search_space.PRIMITIVES, op_reduce="max")


def test_figure_to_image_uint8_rgb():
  genotype = genotype_lib.derive_genotype(
    _random_psi(8, search_space.PRIMITIVES), search_space.PRIMITIVES
  )
  fig = plots.plot_global_architecture(genotype)
  width, height = fig.get_size_inches() * fig.dpi
  image = plots.figure_to_image(fig)
  assert image.dtype == np.uint8
  assert image.shape == (round(height), round(width), 3)
  assert image.std() > 0


def test_figure_to_image_other_canvas():
  fig = Figure(figsize=(2, 1), dpi=50)  # No Agg canvas attached.
  fig.add_subplot().plot([0, 1], [1, 0])
  fig.set_canvas(backend_bases.FigureCanvasBase(fig))
  image = plots.figure_to_image(fig)
  assert image.dtype == np.uint8 and image.shape == (50, 100, 3)
