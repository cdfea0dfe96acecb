"""The report's pictures as PNG bytes (matplotlib's Agg canvas via Figure, so no global backend is touched)."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

HELPFUL, HARMFUL, ACCENT, INK, GRID = "#1b8a5a", "#d1495b", "#3c64b4", "#2b2d42", "#e6e8ef"
STYLE = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#9aa0ad",
         "axes.labelcolor": INK, "xtick.color": "#5c6270", "ytick.color": "#5c6270", "axes.grid": True,
         "grid.color": GRID, "grid.linewidth": 0.8, "axes.axisbelow": True, "font.family": "DejaVu Sans"}


def _figure(w: float, h: float, margins: tuple[float, float, float, float] | None = None):
    """A Figure on the Agg canvas; fixed margins (left, bottom, right, top) are much faster than constrained layout."""
    from matplotlib.figure import Figure

    if margins is None:
        return Figure(figsize=(w, h), dpi=110, layout="constrained")
    fig = Figure(figsize=(w, h), dpi=110)
    fig.subplots_adjust(*margins)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def _styled(draw):
    def wrapper(*args, **kwargs) -> bytes:
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)
    wrapper.__doc__, wrapper.__name__ = draw.__doc__, draw.__name__
    return wrapper


def image_png(image: np.ndarray, size: int = 84) -> bytes:
    """One example's image, scaled up without smoothing to about `size` pixels (dark ink on white)."""
    from matplotlib.image import imsave

    a = np.asarray(image, dtype=np.float32)
    scale = max(1, size // max(a.shape[:2]))
    a = np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    if a.ndim == 2:
        imsave(buf, a, cmap="gray_r", vmin=0, vmax=1, format="png")
    else:
        imsave(buf, np.clip(a[..., :3], 0, 1), format="png")
    return buf.getvalue()


@_styled
def self_influence_png(values: np.ndarray, threshold: float | None = None,
                       flagged: Sequence[int] | None = None) -> bytes:
    """Histogram of self-influence over the training set; the gallery's cut-off and flagged examples marked."""
    v = np.asarray(values, dtype=np.float64)
    fig = _figure(6.4, 2.6, (0.09, 0.17, 0.98, 0.97))
    ax = fig.add_subplot()
    positive = v[v > 0]
    use_log = positive.size == v.size and positive.size > 1 and positive.max() / positive.min() > 100
    bins = np.geomspace(positive.min(), positive.max(), 50) if use_log else 50
    ax.hist(v, bins=bins, color=ACCENT, alpha=0.85, label="all training examples")
    if flagged:
        ax.hist(v[list(flagged)], bins=bins, color=HARMFUL, alpha=0.9, label="flagged (e.g. flipped labels)")
    if use_log:
        ax.set_xscale("log")
    ax.set_yscale("log")
    if threshold is not None:
        ax.axvline(threshold, color=INK, lw=1, ls="--", label="gallery cut-off")
    ax.set_xlabel("self-influence  gᵢᵀ(H + λI)⁻¹gᵢ")
    ax.set_ylabel("training examples")
    ax.legend(frameon=False, loc="upper right")
    return _png(fig)


@_styled
def spectrum_png(eigenvalues: Sequence[float], damping: float) -> bytes:
    """Eigenvalues the solver kept, largest first, on a log scale, against the damping λ."""
    e = np.sort(np.abs(np.asarray(eigenvalues, dtype=np.float64)))[::-1]
    fig = _figure(6.4, 2.6, (0.1, 0.17, 0.98, 0.97))
    ax = fig.add_subplot()
    ax.semilogy(np.arange(1, e.size + 1), e, "o-", ms=3, lw=1.2, color=ACCENT, label="|eigenvalue|")
    if damping > 0:
        ax.axhline(damping, color=HARMFUL, lw=1, ls="--", label=f"damping λ = {damping:.3g}")
    ax.set_xlabel("rank")
    ax.set_ylabel("curvature eigenvalue")
    ax.legend(frameon=False)
    return _png(fig)


@_styled
def stages_png(names: Sequence[str], seconds: Sequence[float]) -> bytes:
    """Where the time went: one horizontal bar per stage."""
    h = 0.42 * len(names) + 0.6
    left = min(0.55, 0.03 + 0.0125 * max(map(len, names), default=1))
    fig = _figure(6.4, h, (left, 0.45 / h, 0.97, 1 - 0.1 / h))
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    ax.barh(y, seconds, color=ACCENT, height=0.6)
    ax.set_yticks(y, labels=list(names))
    for yi, s in zip(y, seconds):
        ax.text(s, yi, f"  {s:.2f} s", va="center", color=INK, fontsize=8)
    ax.set_xlabel("seconds")
    ax.margins(x=0.15)
    ax.grid(axis="y", visible=False)
    return _png(fig)


@_styled
def query_scores_png(row: np.ndarray) -> bytes:
    """One query's scores over every training example: most are near zero, a few help or hurt a lot."""
    v = np.asarray(row, dtype=np.float64)
    counts, edges = np.histogram(v, bins=40)
    fig = _figure(3.3, 1.3, (0.04, 0.3, 0.98, 0.97))
    ax = fig.add_subplot()
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    colors = np.where(centers >= 0, HELPFUL, HARMFUL)
    ax.bar(centers, np.log1p(counts), width=width, color=colors, linewidth=0)
    ax.axvline(0, color=INK, lw=0.8)
    ax.set_xlabel("this query's scores over the training set (log count)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_yticks([])
    ax.grid(False)
    return _png(fig)
