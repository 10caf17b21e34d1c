"""What both figures (error vs batch, curves) share: the caption that says what was run and what a
bar or band means, type sizes and legend placement for `--size`, and saving in the format the file
name asks (PDF, SVG or PNG)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from ..errors import UserError
from .run_records import Run
from .style import SizeStyle, backbone_name, data_name

FORMATS = {".pdf": "pdf", ".svg": "svg", ".png": "png"}
PNG_DPI = 300
# no creation dates (and a fixed SVG id salt, in save_figure), so that the same records give the
# same bytes
METADATA: dict[str, dict[str, Any]] = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}
LINE_SPACING = 1.45 / 72  # inches per point of type


def figure_format(target: Path) -> str:
    """pdf, svg or png, from the file name; another suffix -> UserError (checked before any work,
    so nothing is written)."""
    found = FORMATS.get(target.suffix.lower())
    if found is None:
        raise UserError(
            f"--out {target}: cannot write a {target.suffix or 'suffix-less'} figure; end the "
            "name in .pdf or .svg (vector, for a paper) or .png"
        )
    return found


def save_figure(fig: Figure, target: Path) -> Path:
    """Write a figure in the format its suffix names (PNG at 300 dpi); an unwritable place is a
    UserError naming it."""
    kind = figure_format(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # PDF fonts embedded as TrueType (Type 42), which publishers ask for rather than Type 3
        with matplotlib.rc_context({"pdf.fonttype": 42, "svg.hashsalt": "normbench"}):
            fig.savefig(target, format=kind, dpi=PNG_DPI, metadata=METADATA.get(kind))
    except OSError as error:
        raise UserError(f"cannot write {target}: {error.strerror or error}") from None
    return target


def _distinct(values: Iterable[Any]) -> str:
    """The different values as "a/b/c" (numbers in increasing order; one value: itself); empty if
    none is known."""
    known = {v for v in values if v not in (None, "", "None")}
    numbers = sorted(v for v in known if isinstance(v, (int, float)))
    seen = [str(v) for v in numbers] + sorted(str(v) for v in known if v not in numbers)
    return "/".join(seen) if len(seen) <= 3 else f"{len(seen)} different"


def describe_runs(runs: list[Run]) -> list[str]:
    """What the drawn runs are, in words: backbone on data, training images, epochs, devices; a
    setting that differs between runs lists its values."""
    setups = [run.record.setup or {} for run in runs]
    images = _distinct(f"{n:,}" for n in (s.get("train_images") for s in setups) if n)
    backbones = _distinct(
        backbone_name((run.record.config or {}).get("backbone") or {}) for run in runs
    )
    pieces = [f"{backbones} on {_distinct(data_name(run.get('data')) for run in runs)}"]
    pieces += [f"{images} training images"] if images else []
    epochs = _distinct(run.get("epochs") for run in runs)
    pieces.append(f"{epochs} epoch{'' if epochs == '1' else 's'}")
    devices = _distinct(run.get("devices") for run in runs)
    return pieces + ([f"{devices} devices"] if devices not in ("", "1") else [])


def wrap_caption(pieces: list[str], chars: int) -> str:
    """The pieces in lines of at most about `chars` characters, broken between pieces (a piece
    longer than a line is wrapped on its own). A piece that starts with "; " follows the one
    before it with a semicolon, the others with a comma."""
    lines: list[str] = []
    for piece in pieces:
        sep, text = ("; ", piece[2:]) if piece.startswith("; ") else (", ", piece)
        if lines and len(lines[-1]) + len(sep) + len(text) <= chars:
            lines[-1] += sep + text
            continue
        if lines:
            lines[-1] += sep.rstrip()
        lines += textwrap.wrap(text, chars) or [text]
    return "\n".join(lines)


def seed_range(counts: set[int]) -> str:
    """ "3", or "1–3" when the points or lines have different numbers of seeds."""
    return str(min(counts)) if len(counts) == 1 else f"{min(counts)}–{max(counts)}"


def bars_pieces(counts: set[int]) -> list[str]:
    """What the error bars are, given each point's number of seeds (none claimed for one seed),
    as caption pieces."""
    if max(counts, default=0) <= 1:
        return ["; one seed per point (no error bars)"]
    lone = ["; points of one seed have no bar"] if min(counts) == 1 else []
    return [f"; mean ± sample std over {seed_range(counts)} seeds", *lone]


def legend_rows(style: SizeStyle, entries: int) -> int:
    """Rows of a legend below the axes, in rows of `legend_columns` entries."""
    return math.ceil(entries / style.legend_columns)


def figure_height(style: SizeStyle, axes: float, caption: str, legend_rows: int) -> float:
    """Inches: `axes` for the panels and their labels, plus the caption's lines and the legend's
    rows below them."""
    return axes + LINE_SPACING * style.font * (caption.count("\n") + 1 + legend_rows)


def set_fonts(ax: Any, style: SizeStyle) -> None:
    """Tick labels and axis labels at the size's type sizes."""
    ax.tick_params(labelsize=style.font)
    ax.xaxis.label.set_size(style.label)
    ax.yaxis.label.set_size(style.label)


def add_legend(
    fig: Figure, handles: list[Any], labels: list[str], title: str | None, style: SizeStyle
) -> None:
    """The figure's legend below the axes, in rows of `legend_columns` entries, where
    constrained layout makes room for it (never over the caption or the data)."""
    if not handles:
        return
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(handles), style.legend_columns),
        title=title,
        fontsize=style.font,
        title_fontsize=style.font,
        frameon=False,
    )
