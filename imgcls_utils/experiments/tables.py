"""Result tables as Markdown, for reports a reader opens in any viewer (pandas' own to_markdown
needs the tabulate package), and the mean ± std cells of sweeps and cross-validation."""

from __future__ import annotations

import math

import pandas as pd


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (without its index), floats to 4 places."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def plus_minus(mean: float, std: float) -> str:
    """``0.9834 ± 0.0026``; the mean alone where the spread is unknown (one run)."""
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _cell(value) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")
