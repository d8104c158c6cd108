"""Draw docs/figures/architecture.png: the stages of imgcls_utils (one box per subpackage, its
modules read from the package itself) and the folders the data flows through between them.

    .venv/bin/python docs/draw_architecture.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "imgcls_utils"
OUTPUT = REPO / "docs" / "figures" / "architecture.png"

# (subpackage, x, y, colour): the stages left to right in data-flow order, experiments below.
STAGES = [("data", 0.0, 3.0, "#DCE9F7"), ("training", 3.2, 3.0, "#E3F1DF"),
          ("evaluation", 6.4, 3.0, "#FBEBD9"), ("serving", 9.6, 3.0, "#EDE3F3"),
          ("experiments", 4.8, 0.0, "#F3F3F3")]
# The folders and endpoints the data flows through: (label, centre x, y).
FOLDERS = {"source": ("data.source: digits,\nidx:, tfds: or a folder", 0.6, 7.6),
           "raw": ("data/Raw_Data/\n(never written)", 2.4, 7.6),
           "processed": ("data/Processed_Data/\nshards + split.csv", 4.4, 7.6),
           "models": ("Trained_Models/<run>/\nmodel folder", 7.4, 7.6),
           "exports": ("exports/<name>/<version>/\nSavedModel + TFLite", 10.4, 7.6),
           "api": ("REST API, web page,\nreplicas behind nginx", 12.4, 7.6),
           "runs": ("runs/: executed notebooks,\nresults tables, reports", 9.6, 0.6)}
# (from, to, from side, to side): sides as fractions of each box (x, y).
FLOWS = [("source", "raw", (1, .5), (0, .5)), ("raw", "data", (.5, 0), (.3, 1)),
         ("data", "processed", (.8, 1), (.3, 0)), ("processed", "training", (.6, 0), (.4, 1)),
         ("training", "models", (.8, 1), (.3, 0)), ("models", "evaluation", (.5, 0), (.5, 1)),
         ("models", "serving", (.8, 0), (.3, 1)), ("serving", "exports", (.7, 1), (.6, 0)),
         ("exports", "api", (1, .5), (0, .5)), ("experiments", "runs", (1, .5), (0, .5)),
         ("experiments", "data", (.2, 1), (.7, 0)), ("experiments", "training", (.5, 1), (.6, 0)),
         ("experiments", "evaluation", (.8, 1), (.4, 0))]
BOX_WIDTH, BOX_HEIGHT = 2.8, 3.6


def modules(stage: str) -> list[str]:
    return sorted(path.stem for path in (PACKAGE / stage).glob("*.py") if path.stem != "__init__")


def top_level() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def draw_stage(ax, stage: str, x: float, y: float, colour: str):
    """A stage's box listing its modules; returns the box (arrows attach to it)."""
    names = modules(stage)
    height = BOX_HEIGHT if stage != "experiments" else 2.4
    box = ax.add_patch(FancyBboxPatch((x, y), BOX_WIDTH, height, boxstyle="round,pad=0.05",
                                      facecolor=colour, edgecolor="#555555"))
    ax.text(x + 0.12, y + height - 0.3, f"{stage}/", fontsize=11, weight="bold", va="top")
    per_column = -(-len(names) // (1 if len(names) <= 9 else 2))
    for index, name in enumerate(names):
        column, row = divmod(index, per_column)
        ax.text(x + 0.2 + column * 1.35, y + height - 0.8 - row * 0.3, name, fontsize=8,
                family="monospace", va="top")
    return box


def draw_folder(ax, label: str, x: float, y: float):
    return ax.text(x, y, label, ha="center", va="center", fontsize=8,
                   bbox={"boxstyle": "round,pad=0.3", "facecolor": "white",
                         "edgecolor": "#999999"})


def draw() -> Path:
    fig, ax = plt.subplots(figsize=(14, 8.8))
    ax.set(xlim=(-0.3, 13.6), ylim=(-0.4, 8.3))
    ax.axis("off")
    boxes = {stage: draw_stage(ax, stage, x, y, colour) for stage, x, y, colour in STAGES}
    boxes.update({name: draw_folder(ax, *spec) for name, spec in FOLDERS.items()})
    fig.canvas.draw()  # the folders' boxes get their size
    for start, end, start_side, end_side in FLOWS:
        ax.annotate("", xy=end_side, xycoords=boxes[end], xytext=start_side,
                    textcoords=boxes[start], arrowprops={"arrowstyle": "-|>", "color": "#444444",
                                                         "shrinkA": 2, "shrinkB": 2})
    ax.text(0.0, 2.3, "top level:\n" + "\n".join(top_level()), fontsize=8, family="monospace",
            va="top")
    ax.text(4.8, -0.25, "sweeps and cross-validation run the notebooks, which call the stages "
            "through data_utils and model_utils", fontsize=8, va="top")
    ax.set_title("imgcls_utils: the stages of the data flow", fontsize=13)
    fig.tight_layout()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUTPUT, dpi=90)
    plt.close(fig)
    return OUTPUT


if __name__ == "__main__":
    print(draw(), file=sys.stdout)
