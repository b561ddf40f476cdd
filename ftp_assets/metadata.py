"""Small helpers that turn domain results into metadata people can read in the Dagster UI: typed
tables (sortable, each column with its type) rather than hand-made markdown, and one plot."""

from __future__ import annotations

import base64
import io
import numbers
from collections.abc import Mapping, Sequence

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from ftp_assets.adapters.providers.base import StepMetrics
from ftp_assets.domain.ab_stats import Analysis

Cell = str | int | float | bool | None


def preview_table(rows: Sequence[Mapping], max_chars: int = 120) -> MetadataValue:
    """The first rows of a dataset, long texts cut at ``max_chars``."""

    def cell(value) -> Cell:
        value = _plain(value)
        if not isinstance(value, str) or len(value) <= max_chars:
            return value
        return value[: max_chars - 1] + "…"

    records = [{key: cell(value) for key, value in row.items()} for row in rows]
    names = list(dict.fromkeys(key for record in records for key in record))
    columns = [TableColumn(name, _column_type([record.get(name) for record in records])) for name in names]
    return MetadataValue.table([TableRecord(record) for record in records], TableSchema(columns=columns))


def counts_table(counts: Mapping[str, int | float], header: tuple[str, str] = ("reason", "posts")) -> MetadataValue:
    """One row per counted thing, in the mapping's order."""
    label, count = header
    records = [{label: str(name), count: _plain(value)} for name, value in counts.items()]
    columns = [TableColumn(label), TableColumn(count, _column_type([record[count] for record in records]))]
    return MetadataValue.table([TableRecord(record) for record in records], TableSchema(columns=columns))


def train_loss_table(step_metrics: Sequence[StepMetrics]) -> MetadataValue:
    """The training loss at each step the provider reported one."""
    columns = [TableColumn("step", "int"), TableColumn("train_loss", "float")]
    records = [
        TableRecord({"step": m.step, "train_loss": m.train_loss}) for m in step_metrics if m.train_loss is not None
    ]
    return MetadataValue.table(records, TableSchema(columns=columns))


def arms_table(analysis: Analysis, champion_model: str, challenger_model: str) -> MetadataValue:
    """The experiment's two arms; the challenger's row carries the lift and its intervals."""
    level = f"{1 - analysis.alpha:.0%}"
    columns = [
        TableColumn("arm"),
        TableColumn("model"),
        TableColumn("posts", "int", description="matured posts of the arm"),
        TableColumn("engagement_rate", "float", description="engagements / impressions over the arm's posts"),
        TableColumn("lift", "float", description="the challenger's rate relative to the champion's, minus 1"),
        TableColumn("ci_lower", "float", description=f"always-valid {level} interval of the lift (decides)"),
        TableColumn("ci_upper", "float", description=f"always-valid {level} interval of the lift (decides)"),
        TableColumn("fixed_ci_lower", "float", description=f"fixed-horizon {level} interval, for information"),
        TableColumn("fixed_ci_upper", "float", description=f"fixed-horizon {level} interval, for information"),
    ]
    no_lift = dict.fromkeys(("lift", "ci_lower", "ci_upper", "fixed_ci_lower", "fixed_ci_upper"))
    champion = {
        "arm": "champion (control)",
        "model": champion_model,
        "posts": analysis.n_control,
        "engagement_rate": analysis.rate_control,
        **no_lift,
    }
    challenger = {
        "arm": "challenger (treatment)",
        "model": challenger_model,
        "posts": analysis.n_treatment,
        "engagement_rate": analysis.rate_treatment,
        **{name: getattr(analysis, name) for name in no_lift},
    }
    records = [TableRecord({key: _plain(value) for key, value in row.items()}) for row in (champion, challenger)]
    return MetadataValue.table(records, TableSchema(columns=columns))


def lift_history_plot(looks: Sequence[Mapping[str, float]]) -> MetadataValue:
    """Lift and always-valid interval at each look (``lift``, ``ci_lower``, ``ci_upper``), as a
    PNG inside markdown: Dagster shows no image metadata otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = range(1, len(looks) + 1)
    lifts = [look["lift"] for look in looks]
    below = [look["lift"] - look["ci_lower"] for look in looks]
    above = [look["ci_upper"] - look["lift"] for look in looks]
    figure, axes = plt.subplots(figsize=(6, 3), dpi=100)
    axes.errorbar(positions, lifts, yerr=[below, above], fmt="o", capsize=3, label="lift, always-valid interval")
    axes.axhline(0, color="grey", linewidth=1)
    axes.set_xlabel("evaluation")
    axes.set_ylabel("relative lift")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    png = base64.b64encode(buffer.getvalue()).decode()
    return MetadataValue.md(f"![lift and always-valid interval per evaluation](data:image/png;base64,{png})")


def _plain(value) -> Cell:
    """A value a table record accepts: numbers (NumPy's too) as Python numbers, the rest as text."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


def _column_type(values: Sequence[Cell]) -> str:
    """The Dagster column type of the (non-null) values; "string" when they share none."""
    types = {type(value) for value in values if value is not None}
    if types == {bool}:
        return "bool"
    if types and types <= {int}:
        return "int"
    if types and types <= {int, float}:
        return "float"
    return "string"
