"""The PNG plots of a run's report.html: training curves, other validation figures, slices.

Each function takes plain numbers and names and returns PNG bytes (or None when there is
nothing to draw). Figures are bare matplotlib `Figure`s on their own Agg canvas, so no pyplot
state is touched. Labels may be Japanese (label values, slice values), so a CJK font is used
when one is installed; see `font_rc`.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from migaki.data.report_html import font_rc

log = logging.getLogger(__name__)

DPI = 150  # shown at 100 dpi's size, so plots stay sharp on high-density screens
WIDTH = 5.6  # inches: 560 CSS pixels, the width img_tag gives every image
MAX_BARS = 30
MAX_PANELS = 6  # validation figures besides the loss
# Font files that hold Japanese glyphs, by file name, lower case: looked for when matplotlib's
# font cache predates their installation (it is built once and never rescanned).
TRAIN_COLOR, VAL_COLOR, BEST_COLOR, RISE_COLOR = "#4c78a8", "#f58518", "#2ca02c", "#d62728"


def training_curves_png(
    train: Sequence[tuple[int, float]],
    val: Sequence[tuple[int, float]],
    best_step: int | None,
    rise_step: int | None,
) -> bytes | None:
    """Train and validation loss against step, (step, loss) pairs in step order, with a line
    at the best validation step and one where validation loss began to rise."""
    if not train and not val:
        return None

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        if train:
            ax.plot(*zip(*train, strict=True), color=TRAIN_COLOR, lw=1, alpha=0.8, label="train")
        if val:
            ax.plot(*zip(*val, strict=True), "o-", color=VAL_COLOR, ms=3, label="validation")
        if best_step is not None:
            ax.axvline(best_step, color=BEST_COLOR, lw=1.2, label=f"best step {best_step}")
        if rise_step is not None:
            label = f"rising from step {rise_step}"
            ax.axvline(rise_step, color=RISE_COLOR, lw=1.2, ls="--", label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    return render_png(draw, (WIDTH, 3.2))


def validation_figures_png(
    figures: dict[str, Sequence[tuple[int, float]]], best_step: int | None
) -> bytes | None:
    """One small panel per validation figure (name -> (step, value) pairs), the best step
    marked on each; at most MAX_PANELS."""
    shown = [(name, points) for name, points in figures.items() if points][:MAX_PANELS]
    if not shown:
        return None
    columns = min(3, len(shown))
    rows = math.ceil(len(shown) / columns)

    def draw(figure: Figure) -> None:
        axes = figure.subplots(rows, columns, squeeze=False).flatten()
        for ax, (name, points) in zip(axes, shown, strict=False):
            ax.plot(*zip(*points, strict=True), "o-", color=VAL_COLOR, ms=2.5, lw=1)
            if best_step is not None:
                ax.axvline(best_step, color=BEST_COLOR, lw=1)
            ax.set_title(name, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in axes[len(shown) :]:
            ax.set_visible(False)

    return render_png(draw, (WIDTH, 1.9 * rows))


def bars_png(values: Sequence[tuple[str, float]], xlabel: str) -> bytes | None:
    """Horizontal bars, one per (name, value) in the given order (at most MAX_BARS)."""
    shown = [(name, value) for name, value in values if _finite(value)][:MAX_BARS]
    if not shown:
        return None

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        names = [str(name)[:40] for name, _ in shown]
        bars = ax.barh(range(len(shown)), [value for _, value in shown], color=TRAIN_COLOR)
        ax.set_yticks(range(len(shown)), names)
        ax.invert_yaxis()  # first value on top, in the table's order
        ax.bar_label(bars, fmt="{:.3f}", padding=2, fontsize=8)
        ax.margins(x=0.18)
        ax.set_xlabel(xlabel)

    return render_png(draw, (WIDTH, 0.9 + 0.28 * len(shown)))


def render_png(draw: Callable[[Figure], None], size: tuple[float, float]) -> bytes:
    """Draw on a fresh Agg figure of `size` inches under `font_rc` and return PNG bytes."""
    with warnings.catch_warnings(), matplotlib.rc_context(font_rc()):
        # A glyph no installed font has (Japanese without a CJK font, emoji) would only warn
        # on the console; the tables beside the plots show the text.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        figure = Figure(figsize=size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        draw(figure)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
        figure.clear()
    return buffer.getvalue()


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
