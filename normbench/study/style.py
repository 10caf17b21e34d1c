"""How figures draw and name things: one colour, marker and line style per norm, the same in every
figure, and the names papers use (BN, GN, ... for norms; ResNet-20, Fashion-MNIST for backbones and
data).

The built-in norms have a fixed style each (no two share a marker and fill); a plugin norm gets one
derived from a checksum of its name, so it is the same in every figure and every session, always
with a hollow marker and a dash pattern that no built-in norm uses. Torch-free and matplotlib-free:
the CLI imports the `--size`/`--x` choices from here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import Enum
from typing import Any

# Okabe & Ito's colour-blind-safe palette (less its yellow, too pale on white), then brown, olive,
# gray
BLUE, VERMILLION, GREEN, PURPLE = "#0072B2", "#D55E00", "#009E73", "#CC79A7"
ORANGE, SKY, BLACK, BROWN, OLIVE, GRAY = (
    "#E69F00",
    "#56B4E9",
    "#000000",
    "#8C564B",
    "#999933",
    "#7F7F7F",
)
PALETTE = (BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, BLACK, BROWN, OLIVE, GRAY)
# markers that cover less area than a circle of the same size
MARKER_SCALE = {"*": 1.45, "+": 1.3, "x": 1.15, "d": 1.15}


class Size(str, Enum):
    """`plot --size`: the width of a figure in a two-column paper."""

    column = "column"
    page = "page"


class XAxis(str, Enum):
    """`plot --curves --x`: what the curves' x axis counts."""

    epochs = "epochs"
    images = "images"


@dataclass(frozen=True)
class SizeStyle:
    """Dimensions and type sizes of one `--size`, chosen to be legible printed at that width.

    Args:
        width: inches (a column of a two-column paper is about 3.3 in, the page about 6.9 in).
        font: points, for tick labels, legend and caption.
        label: points, for axis labels and panel titles.
        line: line width in points.
        marker: marker size in points.
        legend_columns: entries per row of the legend (below the axes).
        axes_height: inches for the axes of error vs batch and their labels.
        panels_height: inches for the two rows of panels of the curves and their labels.
    """

    width: float
    font: float
    label: float
    line: float
    marker: float
    legend_columns: int
    axes_height: float
    panels_height: float

    @property
    def caption_chars(self) -> int:
        """About how many characters of caption fit on one line (a character is ~0.55 em)."""
        return int(self.width * 72 / (0.55 * self.font))


SIZES = {
    Size.column: SizeStyle(3.3, 7.0, 8.0, 1.0, 4.0, 3, 2.55, 3.6),
    Size.page: SizeStyle(6.9, 8.5, 9.5, 1.3, 5.0, 6, 3.3, 4.4),
}


@dataclass(frozen=True)
class LineStyle:
    """What tells one line of a figure from the others.

    Args:
        color: a matplotlib colour.
        marker: a matplotlib marker.
        linestyle: a named style ("-", "--", "-.", ":") or an (offset, dashes) tuple.
        filled: False draws the marker hollow (white inside).
    """

    color: str
    marker: str
    linestyle: Any
    filled: bool = True

    def kwargs(self, markersize: float) -> dict[str, Any]:
        """Keyword arguments for Axes.plot / Axes.errorbar, markers about `markersize` points
        (thin shapes a little larger, so that all look about as big)."""
        return {
            "color": self.color,
            "marker": self.marker,
            "markersize": markersize * MARKER_SCALE.get(self.marker, 1.0),
            "linestyle": self.linestyle,
            "markerfacecolor": self.color if self.filled else "white",
            "markeredgecolor": self.color,
        }


# norm -> (the name papers use, its style); bn first: the baseline every figure compares with
NORM_STYLES: dict[str, tuple[str, LineStyle]] = {
    "bn": ("BN", LineStyle(BLUE, "o", "-")),
    "gn": ("GN", LineStyle(VERMILLION, "s", "-")),
    "ln": ("LN", LineStyle(GREEN, "^", "--")),
    "in": ("IN", LineStyle(PURPLE, "v", "--")),
    "frn": ("FRN", LineStyle(ORANGE, "D", "-.")),
    "mabn": ("MABN", LineStyle(SKY, "p", "-.")),
    "syncbn": ("SyncBN", LineStyle(BLACK, "h", "--")),
    "brn": ("BRN", LineStyle(BLUE, "<", ":")),
    "gbn": ("GBN", LineStyle(SKY, ">", ":")),
    "evonorm_b0": ("EvoNorm-B0", LineStyle(ORANGE, "P", "--")),
    "evonorm_s0": ("EvoNorm-S0", LineStyle(GREEN, "X", "-.")),
    "gn_ws": ("GN+WS", LineStyle(VERMILLION, "d", "--")),
    "sn": ("SN", LineStyle(PURPLE, "*", "-")),
    "wn": ("WN", LineStyle(BROWN, "H", ":")),
    "wn_mobn": ("WN+MOBN", LineStyle(BROWN, "s", "-", filled=False)),
    "l2norm": ("L2Norm", LineStyle(OLIVE, "+", "--")),
    "cbn": ("CBN", LineStyle(BLACK, "o", "-.", filled=False)),
    "none": ("no norm", LineStyle(GRAY, "x", ":")),
}
# a plugin norm's choices: markers drawn hollow, dash patterns that no built-in norm uses
PLUGIN_MARKERS = ("o", "s", "^", "v", "D", "p", "h", "<", ">", "H", "8", "d")
PLUGIN_DASHES = ((0, (5, 1, 1, 1)), (0, (1, 2)), (0, (6, 2)), (0, (3, 1, 1, 1, 1, 1)))

BACKBONE_NAMES = {
    "lenet": "LeNet-5",
    "resnet18": "ResNet-18",
    "resnet20": "ResNet-20",
    "resnet50": "ResNet-50",
    "resnet56": "ResNet-56",
    "shufflenet_v2": "ShuffleNet V2",
}
DATA_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "fashion_mnist": "Fashion-MNIST",
    "mnist": "MNIST",
    "synthetic": "synthetic data",
    "imagefolder": "an image folder",
}


def norm_name(norm: Any) -> str:
    """The name papers use for a norm (`gn` -> GN, `none` -> no norm); a plugin norm keeps its
    own."""
    entry = NORM_STYLES.get(norm) if isinstance(norm, str) else None
    return entry[0] if entry else str(norm)


def norm_style(norm: Any) -> LineStyle:
    """A norm's style: the fixed one of a built-in norm, else one derived from its name."""
    entry = NORM_STYLES.get(norm) if isinstance(norm, str) else None
    if entry:
        return entry[1]
    # crc32, not hash(): str hashes change between processes (PYTHONHASHSEED)
    code = zlib.crc32(str(norm).encode())
    return LineStyle(
        PALETTE[code % len(PALETTE)],
        PLUGIN_MARKERS[(code // len(PALETTE)) % len(PLUGIN_MARKERS)],
        PLUGIN_DASHES[(code // 1000) % len(PLUGIN_DASHES)],
        filled=False,
    )


def row_label(key: str, value: Any) -> str:
    """A line's legend entry: the paper name of a norm, else the value."""
    return norm_name(value) if key == "norm" else str(value)


def row_styles(key: str, values: list[Any]) -> dict[Any, LineStyle]:
    """The style of each line of a figure: a norm's own when the lines are norms, else the
    built-in norms' styles in turn (by position, so the same values get the same styles)."""
    if key == "norm":
        return {value: norm_style(value) for value in values}
    in_turn = [style for _, style in NORM_STYLES.values()]
    return {value: in_turn[i % len(in_turn)] for i, value in enumerate(values)}


def backbone_name(config: dict[str, Any]) -> str:
    """`lenet` -> LeNet-5 (with its activation when it is not the default sigmoid); others by
    name."""
    name = str(config.get("name"))
    shown = BACKBONE_NAMES.get(name, name)
    activation = config.get("activation")
    if name == "lenet" and activation not in (None, "sigmoid"):
        return f"{shown} ({activation})"
    return shown


def data_name(name: Any) -> str:
    """`fashion_mnist` -> Fashion-MNIST, and so on; other data sets by name."""
    return DATA_NAMES.get(name, str(name)) if isinstance(name, str) else str(name)
