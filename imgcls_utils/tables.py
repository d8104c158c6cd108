"""Result tables as Markdown, for reports a reader opens in any viewer (pandas' own to_markdown
needs the tabulate package)."""

from __future__ import annotations

import pandas as pd


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub Markdown table, its index left out, numbers as pandas prints them."""
    header = [str(column) for column in frame.columns]
    rows = [[_cell(value) for value in row] for row in frame.itertuples(index=False)]
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
