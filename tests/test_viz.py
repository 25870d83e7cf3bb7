"""covidlib.viz: figures come back as Figures, name their window, draw true to scale and pick the right slice."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from covidlib import viz
from covidlib.errors import InvalidInputError
from covidlib.io import Volume

matplotlib.use("Agg")


@pytest.fixture()
def volume() -> Volume:
    array = np.full((6, 20, 24), -850.0, np.float32)
    array[:, :, :4] = -1000.0
    return Volume(array, spacing=(5.0, 0.8, 0.8))


@pytest.fixture()
def lesion(volume: Volume) -> np.ndarray:
    mask = np.zeros(volume.shape, np.uint8)
    mask[4, 5:9, 6:12] = 1  # slice 4 holds the most lesion
    mask[1, 5:6, 6:7] = 1
    return mask


def image_titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_every_figure_names_its_window(volume: Volume, lesion: np.ndarray) -> None:
    figures = [
        viz.show_slices(volume, window="mediastinal"),
        viz.show_montage(volume, n=4, window="mediastinal", masks={"lesion": lesion}),
        viz.show_overlay(volume, {"lesion": lesion}, window="mediastinal"),
        viz.show_views(volume, window="mediastinal"),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        assert "mediastinal window [-160, 240] HU" in fig.get_suptitle()
    windows = viz.show_windows(volume)
    assert image_titles(windows) == ["lung window [-1250, 250] HU", "mediastinal window [-160, 240] HU",
                                     "bone window [-450, 1050] HU"]


def test_overlay_defaults_to_the_slice_with_most_mask(volume: Volume, lesion: np.ndarray) -> None:
    fig = viz.show_overlay(volume, lesion)
    assert "z = 4" in fig.get_suptitle()
    assert "z = 1" in viz.show_overlay(volume, lesion, index=1).get_suptitle()
    with pytest.raises(InvalidInputError, match="outside"):
        viz.show_overlay(volume, lesion, index=6)


def test_overlay_pixels_are_coloured_where_the_mask_is(volume: Volume, lesion: np.ndarray) -> None:
    fig = viz.show_overlay(volume, {"lesion": lesion}, alpha=1.0)
    right = fig.axes[1]
    layers = right.get_images()
    assert len(layers) == 2  # grey image, then the lesion layer
    drawn = ~np.ma.getmaskarray(layers[1].get_array())
    np.testing.assert_array_equal(drawn, lesion[4].astype(bool))


def test_views_keep_physical_aspect(volume: Volume) -> None:
    fig = viz.show_views(volume, index=(2, 10, 12))
    aspects = [ax.get_images()[0].axes.get_aspect() for ax in fig.axes[:3]]
    # axial 0.8/0.8; coronal and sagittal stretch z by 5 mm / 0.8 mm.
    assert aspects == pytest.approx([1.0, 6.25, 6.25])
    assert [t.split(" (")[0] for t in image_titles(fig)] == ["axial", "coronal", "sagittal"]
    with pytest.raises(InvalidInputError, match="Volume"):
        viz.show_views(volume.array)


def test_montage_spreads_slices_over_the_volume(volume: Volume) -> None:
    fig = viz.show_montage(volume.array, n=3)
    assert image_titles(fig) == ["z = 0", "z = 2", "z = 5"]
    assert len(viz.show_montage(volume, n=50).axes) >= 6  # capped by the number of slices


def test_label_masks_split_into_named_layers(volume: Volume) -> None:
    lungs = np.zeros(volume.shape, np.uint8)
    lungs[:, :, 4:12], lungs[:, :, 12:20] = 1, 2
    fig = viz.show_overlay(volume, lungs)
    legend_texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert legend_texts == ["label 1", "label 2"]


def test_mask_shape_must_match(volume: Volume) -> None:
    with pytest.raises(InvalidInputError, match="shape"):
        viz.show_overlay(volume, np.zeros((6, 20, 23), np.uint8))


def test_hu_histograms_one_curve_per_present_tissue(volume: Volume) -> None:
    labels = np.where(volume.array < -900, 1, 6).astype(np.uint8)
    fig = viz.show_hu_histograms(volume, labels, {"air": 1, "lung": 6, "bone": 5})
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts[:2] == ["air (-1000)", "lung (-850)"] and len(texts) == 3  # + the shaded window


def test_slice_viewer_is_a_widget_with_a_z_slider(volume: Volume, lesion: np.ndarray) -> None:
    widget = viz.slice_viewer(volume, {"lesion": lesion})
    slider, stack = widget.children
    # One pre-rendered PNG per slice, so the slider works without a kernel (built book).
    assert len(stack.children) == volume.shape[0]
    assert all(bytes(image.value).startswith(b"\x89PNG") for image in stack.children)
    assert (slider.min, slider.max, slider.value) == (0, 5, 4)
    assert stack.selected_index == slider.value


def test_slice_viewer_subsamples_long_volumes(volume: Volume) -> None:
    slider, stack = viz.slice_viewer(volume, max_slices=3).children
    assert len(stack.children) == 3 and slider.max == 2
    with pytest.raises(InvalidInputError, match="max_slices"):
        viz.slice_viewer(volume, max_slices=0)


def test_panels_side_by_side(volume: Volume, lesion: np.ndarray) -> None:
    fig = viz.show_panels({"thin": volume.array[4], "thick": volume.array[:2].mean(axis=0)},
                          masks={"thin": {"lesion": lesion[4]}}, window=(-1000, 0), title="Thin vs thick")
    assert image_titles(fig) == ["thin", "thick"]
    assert fig.get_suptitle() == "Thin vs thick (custom window [-1000, 0] HU)"
    assert len(fig.axes[0].get_images()) == 2 and len(fig.axes[1].get_images()) == 1
    with pytest.raises(InvalidInputError, match="2D"):
        viz.show_panels({"volume": volume.array})


@pytest.mark.parametrize("origin", ["upper", "lower"])
def test_mask_outline_lies_on_the_mask_rows(origin: str) -> None:
    image = np.full((20, 20), -800.0, np.float32)
    mask = np.zeros((20, 20), bool)
    mask[2:6, 3:8] = True
    fig = Figure()
    ax = fig.subplots()
    viz._draw(ax, image, "lung", {"lesion": mask}, 0.3, 1.0, origin)
    outline = ax.collections[-1].get_paths()[0].vertices
    # Rows 2..5 are inside: the 0.5-level outline runs half a pixel outside them.
    assert outline[:, 1].min() == pytest.approx(1.5) and outline[:, 1].max() == pytest.approx(5.5)


def test_run_times_one_bar_per_chapter_in_order() -> None:
    fig = viz.show_run_times({"01_ct": 6.0, "02_data": 8.5}, budget_s=120)
    ax = fig.axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == [6.0, 8.5]
    labels = {t.get_text(): t.get_position()[1] for t in ax.get_yticklabels()}
    assert labels["01_ct"] > labels["02_data"]  # first chapter on top
    assert fig.axes[0].get_title() == "Chapter run times (total 14 s)"
    with pytest.raises(InvalidInputError):
        viz.show_run_times({})
    with pytest.raises(InvalidInputError):
        viz.show_run_times({"x": float("nan")})


def test_show_phantom_and_real_draws_one_panel_per_slice_and_region() -> None:
    rng = np.random.default_rng(0)
    slices = [(rng.integers(0, 256, (30, 20)).astype(np.uint8), np.eye(30, 20, dtype=np.uint8)) for _ in range(3)]
    edges = np.linspace(0, 256, 33)
    shares = {"lung": np.full(32, 1 / 32), "lesion": np.eye(32)[5]}
    histograms = {"phantom": shares, "real": shares}
    fig = viz.show_phantom_and_real(slices, histograms, edges)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 + 2  # three slices, two regions
    with_real = viz.show_phantom_and_real(slices, histograms, edges, real=slices[:2])
    assert len(with_real.axes) == 3 + 2 + 2
    lines = with_real.axes[-1].get_lines()  # the last region's panel: one line a source, phantom solid
    assert [line.get_label() for line in lines] == ["phantom", "real"] and lines[0].get_linestyle() == "-"
    np.testing.assert_allclose(lines[0].get_ydata(), np.eye(32)[5])
    with pytest.raises(InvalidInputError, match="phantom slice"):
        viz.show_phantom_and_real([], histograms, edges)


def test_binned_histograms_draw_shares_of_each_group_and_a_scatter() -> None:
    edges = [0.0, 1.0, 2.0, 4.0]
    fig = viz.show_binned_histograms({"grey": (edges, {"a": [1, 3, 0], "b": [2, 2, 4]})},
                                     scatter={"a": ([1.0, 2.0], [3.0, 4.0]), "c": ([5.0], [6.0])},
                                     scatter_labels=("mean", "sd"))
    histogram, points = fig.axes
    steps = {patch.get_label(): patch for patch in histogram.patches}
    np.testing.assert_allclose(steps["a"].get_data().values, [0.25, 0.75, 0.0])  # counts / total, by hand
    np.testing.assert_allclose(steps["b"].get_data().values, [0.25, 0.25, 0.5])
    np.testing.assert_allclose(steps["a"].get_data().edges, edges)
    offsets = [collection.get_offsets() for collection in points.collections]
    np.testing.assert_allclose(offsets[0], [[1.0, 3.0], [2.0, 4.0]])
    assert points.get_xlabel() == "mean" and points.get_ylabel() == "sd"
    # a group keeps its colour in every panel
    np.testing.assert_allclose(steps["a"].get_edgecolor()[:3], points.collections[0].get_facecolor()[0][:3])
    with pytest.raises(InvalidInputError, match="'grey'.*'a'"):
        viz.show_binned_histograms({"grey": (edges, {"a": [1, 3]})})
    with pytest.raises(InvalidInputError, match="increasing"):
        viz.show_binned_histograms({"grey": ([0.0, 0.0], {"a": [1]})})


def test_figures_from_records_say_when_there_is_nothing_to_draw() -> None:
    for fig in (viz.show_binned_histograms(None, empty_message="no record yet"),
                viz.show_grouped_values({}, empty_message="no record yet")):
        (ax,) = fig.axes
        assert [text.get_text() for text in ax.texts] == ["no record yet"] and not ax.patches and not ax.collections


def test_grouped_values_one_column_per_group_with_its_mean() -> None:
    fig = viz.show_grouped_values({"fold 1": [0.1, 0.3], "fold 2": [0.5]}, ylabel="infection share")
    ax = fig.axes[0]
    points = [c for c in ax.collections if c.get_offsets().shape[1] == 2 and len(c.get_offsets()) and
              not isinstance(c, matplotlib.collections.LineCollection)]
    np.testing.assert_allclose(points[0].get_offsets()[:, 1], [0.1, 0.3])
    assert np.all(np.abs(points[0].get_offsets()[:, 0] - 0) <= 0.25) and points[1].get_offsets()[0, 0] == 1
    means = [c for c in ax.collections if isinstance(c, matplotlib.collections.LineCollection)]
    assert [segment[0][1] for c in means for segment in c.get_segments()] == pytest.approx([0.2, 0.5])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fold 1", "fold 2"] and ax.get_ylabel() == "infection share"
    assert not ax.lines  # no baseline unless asked for
    with pytest.raises(InvalidInputError, match="'fold 3'"):
        viz.show_grouped_values({"fold 3": [float("nan")]})


def test_grouped_values_baseline_is_a_dashed_line_across_the_groups() -> None:
    fig = viz.show_grouped_values({"a − control": [-0.01, 0.02], "b − control": [0.005]}, baseline=0.0)
    (line,) = fig.axes[0].lines
    assert line.get_linestyle() == "--" and list(line.get_ydata()) == [0.0, 0.0]


def test_show_curves_one_line_per_curve_from_step_one_or_a_message() -> None:
    fig = viz.show_curves({"unet": [0.4, 0.2, 0.1], "attention-unet": [0.5]}, ylabel="loss", log_y=True)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["unet", "attention-unet"]
    np.testing.assert_array_equal(lines[0].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(lines[0].get_ydata(), [0.4, 0.2, 0.1])
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "loss"
    (empty,) = viz.show_curves(None, empty_message="no record yet").axes
    assert [text.get_text() for text in empty.texts] == ["no record yet"] and not empty.get_lines()
    with pytest.raises(InvalidInputError, match="'bad'"):
        viz.show_curves({"bad": []})


def test_show_points_one_dot_per_item_of_each_series_or_a_message() -> None:
    fig = viz.show_points({"one network": ([0.01, 0.2], [0.5, 0.8]), "ensemble": ([0.05], [0.9])},
                          xlabel="infected share", ylabel="Dice", log_x=True)
    ax = fig.axes[0]
    dots = ax.collections
    assert [dot.get_label() for dot in dots] == ["one network", "ensemble"]
    np.testing.assert_array_equal(dots[0].get_offsets(), [[0.01, 0.5], [0.2, 0.8]])
    np.testing.assert_array_equal(dots[1].get_offsets(), [[0.05, 0.9]])
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "infected share" and ax.get_ylabel() == "Dice"
    (empty,) = viz.show_points(None, empty_message="no record yet").axes
    assert [text.get_text() for text in empty.texts] == ["no record yet"] and not empty.collections
    with pytest.raises(InvalidInputError, match="'short'.*\\(2,\\) and \\(1,\\)"):
        viz.show_points({"short": ([0.1, 0.2], [0.5])})
    with pytest.raises(InvalidInputError, match="'nan'"):
        viz.show_points({"nan": ([0.1], [float("nan")])})
    with pytest.raises(InvalidInputError, match="'zero'.*log axis"):
        viz.show_points({"zero": ([0.0], [0.5])}, log_x=True)


def test_training_figures_one_panel_per_map_and_a_dot_per_best_epoch() -> None:
    history = [{"epoch": 1, "train_loss": 1.0, "val_dice": 0.2}, {"epoch": 2, "train_loss": 0.5, "val_dice": 0.4}]
    figure = viz.show_learning_curves({"a": history, "b": history})
    assert len(figure.axes) == 2 and len(figure.axes[1].lines) == 4  # a curve and a best-epoch dot per run
    images = np.zeros((2, 8, 8))
    figure = viz.show_attention_maps(images, images, images, {"coarse": np.zeros((2, 4, 4)), "fine": images})
    assert len(figure.axes) == 2 * 4 + 1  # panels and the colour bar
    with pytest.raises(InvalidInputError, match="shape"):
        viz.show_attention_maps(images, images[:1], images, {})
    with pytest.raises(InvalidInputError, match="at least one"):
        viz.show_learning_curves({"a": []})


def test_augmentation_figures_title_each_transform_and_the_mixup_weights() -> None:
    from covidlib.augment import GammaCorrection, Mixup, Rotation

    rng = np.random.default_rng(0)
    image = rng.standard_normal((24, 30)).astype(np.float32)
    mask = np.zeros((24, 30), dtype=np.int64)
    mask[6:15, 8:20] = 1
    fig = viz.show_augmentations(image, mask, [Rotation(2.0), GammaCorrection(1.2)], ncols=3)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["original", "rotate +2.0°", "gamma 1.20"]
    images = np.stack([image, image + 1])[:, None]
    targets = np.stack([mask, 1 - mask])
    transform = Mixup(0.25, np.array([1, 0]))
    mixed, soft = transform(images, targets)
    fig = viz.show_mixup(images, targets, mixed, soft, transform)
    assert "λ=0.25" in fig.axes[0].get_title()


def test_pseudo_label_figures_have_titles_and_draw_on_a_given_axis() -> None:
    from covidlib.pseudo import PseudoLabelConfig

    scores = np.random.default_rng(0).uniform(0.8, 1.0, size=(50, 2))
    fig = viz.show_similarity_histogram(scores)
    assert "Similarity" in fig.axes[0].get_title()
    shared = Figure()
    left, right = shared.subplots(1, 2)
    assert viz.show_similarity_histogram(scores, PseudoLabelConfig(top2_threshold=0.95), ax=right) is shared
    assert "top2 threshold 0.95" in [text.get_text() for text in right.get_legend().get_texts()]
    assert not left.has_data()
    fig = viz.show_pseudo_label_examples(np.zeros((3, 8, 8)), np.ones((3, 8, 8)) * 0.5, np.array([0.9, 0.91, 0.92]), n=2)
    assert len(fig.axes) == 4
    with pytest.raises(InvalidInputError, match="no patches"):
        viz.show_pseudo_label_examples(np.zeros((0, 8, 8)), np.zeros((0, 8, 8)), np.zeros(0))


def test_figure_modules_do_not_import_pyplot() -> None:
    """pyplot keeps every figure it makes and picks a backend on import; the library's figures
    are plain Figures (shown as a cell's value), so importing the modules that draw them leaves it out."""
    import subprocess
    import sys

    modules = ["covidlib.viz", "covidlib.pseudo", "covidlib.augment", "covidlib.activations"]
    script = ("import importlib, sys\n"
              f"for name in {modules!r}: importlib.import_module(name)\n"
              "print('matplotlib.pyplot' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "False"


def test_show_path_draws_runs_means_and_changes_top_down_with_the_rows_styled() -> None:
    rows = [viz.PathRow("start", {"dice": [0.6, 0.7]}),
            viz.PathRow("+ change", {"dice": [0.7, 0.9]}, change=(0.15, 0.05, 0.25), marked=True),
            viz.PathRow("alternative", {"dice": [0.5, 0.6]}, change=(-0.05, -0.2, 0.1), alternative=True)]
    fig = viz.show_path(rows, metrics=["dice"], reference_lines={"dice": {"published": 0.739}})
    scores, changes = fig.axes
    assert [t.get_text() for t in scores.get_yticklabels()] == ["start", "+ change", "alternative"]
    top_down = list(scores.get_yticks())
    assert top_down == [2, 1, 0]  # the first row on top
    means = [c for c in scores.collections if isinstance(c, matplotlib.collections.LineCollection)]
    segments = [segment for c in means for segment in c.get_segments()]
    np.testing.assert_allclose([segment[0] for segment in segments], [[0.65, 1.7], [0.8, 0.7], [0.55, -0.3]])
    styles = [(t.get_fontweight(), t.get_fontstyle()) for t in scores.get_yticklabels()]
    assert styles == [("normal", "normal"), ("bold", "normal"), ("normal", "italic")]
    assert [line.get_xdata()[0] for line in scores.get_lines()] == [0.739]
    # one error bar per row with a change: at its mean, spanning its interval; the first row has none
    bars = [c for c in changes.containers]
    assert len(bars) == 2
    (mean_line, _, (span,)) = bars[0].lines
    assert mean_line.get_xdata()[0] == pytest.approx(0.15) and mean_line.get_ydata()[0] == 1
    np.testing.assert_allclose(span.get_segments()[0][:, 0], [0.05, 0.25])


def test_show_path_refuses_what_it_cannot_draw_and_says_when_there_is_nothing() -> None:
    (empty,) = viz.show_path(None, metrics=["dice"], empty_message="no record yet").axes
    assert [text.get_text() for text in empty.texts] == ["no record yet"]
    with pytest.raises(InvalidInputError, match="'a'.*'dice'"):
        viz.show_path([viz.PathRow("a", {"dice": [float("nan")]})], metrics=["dice"])
    with pytest.raises(InvalidInputError, match="'b'.*low <= mean <= high"):
        viz.show_path([viz.PathRow("b", {"dice": [0.5]}, change=(0.3, 0.1, 0.2))], metrics=["dice"])
    with pytest.raises(InvalidInputError, match="reference lines"):
        viz.show_path([viz.PathRow("c", {"dice": [0.5]})], metrics=["dice"], reference_lines={"other": {"x": 1.0}})
