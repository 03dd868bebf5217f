"""Markdown tables and their cells, from the figure specs of ``xilsweep.metrics``:
a figure's column is headed by its label and printed in its style (a
reference's, ``oracle.<key>``, as the figure); a setting is printed as written
(a number with ``g``)."""

from __future__ import annotations

import pandas as pd

from xilsweep import metrics
from xilsweep.results.collect import SEED, STOP_SCORE, TEST, VAL, reference_figures

SECONDS = "seconds_per_epoch"
# A column printed in the style of a figure: the stopping score is an accuracy (or a mean of two).
STYLE_OF = {STOP_SCORE: VAL}


def setting(value) -> str:
    """A setting's cell: as written, a number with ``g``, empty where missing."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell(value, column: str, magnitude: float | None = None) -> str:
    """``value`` of ``column`` as a table cell: a figure in its style (``magnitude``: the mean
    a std is printed beside), anything else as a setting."""
    spec = metrics.figure(STYLE_OF.get(column, column))
    return spec.format(value, magnitude) if spec else setting(value)


def heading(column: str) -> str:
    """A column's heading: a figure's label, anything else by its name."""
    spec = metrics.FIGURES.get(column)
    return spec.label if spec else column


def pipe_table(names: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of text cells (a ``|`` in a cell shown as ``/``)."""
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(text.replace("|", "/") for text in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(table: pd.DataFrame) -> str:
    rows = [[cell(row[c], c) for c in table.columns] for _, row in table.iterrows()]
    return pipe_table([heading(c) for c in table.columns], rows)


def spread(mean, std, column: str) -> str:
    """``mean ± std`` of a column's figure; the mean alone where there is no spread (one seed)."""
    if pd.isna(std):
        return cell(mean, column)
    return f"{cell(mean, column)} ± {cell(std, column, magnitude=mean)}"


def mean_std(values, column: str) -> str:
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return ""
    return spread(values.mean(), values.std(), column)  # one value: no std (NaN), the value alone


def in_words(row, key: str) -> str:
    """A summary row's figure for a sentence: ``99.03% ± 0.21 (n=3)``."""
    spec, std = metrics.FIGURES[STYLE_OF.get(key, key)], row[f"{key}_std"]
    deviation = "" if pd.isna(std) else f" ± {spec.format(std, magnitude=row[f'{key}_mean'])}"
    return f"{spec.text(row[f'{key}_mean'])}{deviation} (n={int(row['n'])})"


def over_seeds_figures() -> list[str]:
    """The over-seeds table's figures: accuracy and the reliance figures, on validation and
    test data (the shares removed and seconds are in the reliance table, the rest in summary.csv)."""
    reliance = {key for f in metrics.RELIANCE for key in (f.key, f.val_key) if key}
    return [key for key in metrics.FIGURES if key in {VAL, TEST} | reliance]


def summary_markdown(summary: pd.DataFrame, varied: list[str]) -> str:
    """Per setting: n and the over-seeds figures, mean ± std."""
    keys = [k for k in varied if k != SEED]
    figures = [key for key in over_seeds_figures() if f"{key}_mean" in summary]
    rows = [
        [*(setting(row[k]) for k in keys), setting(row["n"])]
        + [spread(row[f"{key}_mean"], row[f"{key}_std"], key) for key in figures]
        for row in summary.to_dict("records")
    ]
    return pipe_table([*keys, "n", *(heading(key) for key in figures)], rows)


def reliance_columns(done: pd.DataFrame) -> list[str]:
    """The reliance table's figures the finished jobs have: clean test accuracy, the reliance
    figures, the shares of the shortcut removed and the seconds per epoch."""
    removed = (metrics.removed_figure(key).key for key in metrics.REMOVED_SHOWN)
    wanted = (TEST, *(f.key for f in metrics.RELIANCE), *removed, SECONDS)
    return [c for c in wanted if c in done and done[c].notna().any()]


def reference_rows(done: pd.DataFrame, keys: list[str], reference_keys: list[str], columns: list[str]) -> list[dict]:
    """The oracle's and the confounded model's rows: mean ± std over the distinct reference
    models of each group of ``reference_keys`` values."""
    label_key = next((k for k in keys if k not in reference_keys), "setting")
    groups = done.groupby(reference_keys, sort=False, dropna=False) if reference_keys else [((), done)]
    rows = []
    for kind, label in metrics.REFERENCE_LABELS.items():
        if f"{kind}.path" not in done:
            continue
        for values, part in groups:
            models = part.drop_duplicates(f"{kind}.path")
            figures = {c: mean_std(models.get(f"{kind}.{c}"), c) for c in columns if c in reference_figures()}
            rows.append(
                {
                    **{k: "" for k in keys or ["setting"]},
                    **{k: setting(v) for k, v in zip(reference_keys, values, strict=True)},
                    label_key: label,
                    "n": len(models),
                    **{heading(c): figures.get(c, "") for c in columns},
                }
            )
    return rows


def reliance_markdown(table: pd.DataFrame, summary: pd.DataFrame, varied: list[str], reference_keys: list[str]) -> str:
    """Question 4: per setting, clean test accuracy and the reliance figures (mean ± std over
    seeds), the share of the shortcut removed and the seconds per epoch, under the oracle's and
    the confounded model's rows (one pair per value of ``reference_keys``, the varied settings
    the reference models are trained with, such as the model: ``select.reference_keys``)."""
    keys = [k for k in varied if k != SEED]
    done = table[table.status == "done"]
    columns = reliance_columns(done)
    rows = reference_rows(done, keys, reference_keys, columns)
    for row in summary.to_dict("records"):
        rows.append(
            {
                **{k: setting(row[k]) for k in keys or ["setting"] if k in row},
                "n": int(row["n"]),
                **{heading(c): spread(row[f"{c}_mean"], row[f"{c}_std"], c) for c in columns},
            }
        )
    shown = pd.DataFrame(rows).fillna("")
    return pipe_table(list(shown.columns), [[str(v) for v in row] for row in shown.itertuples(index=False)])


def seed_note(table: pd.DataFrame) -> str:
    """What the seed spread covers: one shared confounded model, or one per seed."""
    done = table[table.status == "done"]
    if "confounded.path" not in done or done.empty:
        return ""
    n_models = done["confounded.path"].nunique()
    if n_models > 1:
        return (
            f"{n_models} distinct confounded models (and oracles) start these jobs: the spread over seeds "
            "includes the reference models' own training."
        )
    return (
        "One confounded model starts every job: the spread over seeds covers fine-tuning only "
        "(pretrain.seed=${seed} trains one pair of reference models per seed)."
    )
