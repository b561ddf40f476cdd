"""Small helpers that turn domain results into metadata people can read in the Dagster UI: typed
tables (sortable, each column with its type) rather than hand-made markdown, and one plot."""

from __future__ import annotations

import base64
import io
import math
import numbers
from collections.abc import Mapping, Sequence

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from ftp_assets.adapters.experiments_store import LookRecord
from ftp_assets.adapters.providers.base import StepMetrics
from ftp_assets.domain.ab_stats import Analysis
from ftp_assets.domain.experiment_plan import ExperimentPlan
from ftp_assets.domain.planned_looks import LookAnalysis

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


def plan_table(plan: ExperimentPlan) -> MetadataValue:
    """The experiment's plan, fixed at its start: one row per setting, with what it means."""
    rule = (
        f"group-sequential, one-sided alpha {plan.alpha:g}, {plan.spending} spending"
        if plan.rule == "group_sequential"
        else f"always-valid interval, two-sided alpha {plan.alpha:g}"
    )
    information = "none (the always-valid rule needs no maximum)"
    if plan.maximum_information is not None:
        information = f"{plan.maximum_information:,.0f} effective posts"
    covariates = plan.covariates
    rows = {
        "rule": rule,
        "maximum information": information,
        "planned from": plan.maximum_information_basis,
        "deadline": f"{plan.max_duration_hours:g} h after {plan.started_at:%Y-%m-%d %H:%M} UTC",
        "challenger share": (
            f"{plan.initial_share:.0%}, then {plan.ramped_share:.0%} once {plan.ramp_min_challenger_posts} challenger "
            f"posts show no harm (grace ±{plan.ramp_grace_minutes:g} min)"
            if plan.ramps
            else f"{plan.initial_share:.0%} throughout"
        ),
        "minimum lift": f"{plan.minimum_lift:+.1%}",
        "harm check": f"always-valid {1 - plan.guardrail_alpha:.0%} interval below zero rejects",
        "sample ratio check": f"sequential (Lindon-Malek) per phase, p < {plan.srm_alpha:g} rejects",
        "covariates": (
            f"persona, weekday and hour rates from {covariates.posts} posts before the start"
            if covariates is not None
            else f"none: {plan.covariates_note}"
        ),
    }
    records = [TableRecord({"setting": key, "value": value}) for key, value in rows.items()]
    return MetadataValue.table(records, TableSchema(columns=[TableColumn("setting"), TableColumn("value")]))


def phases_table(analysis: LookAnalysis, champion_model: str, challenger_model: str) -> MetadataValue:
    """Each phase of the ramp at this look: its share, both arms' posts and rates, its lift (the
    phases' lifts are combined by their information, never pooled) and its sample-ratio check."""
    columns = [
        TableColumn("phase", "int"),
        TableColumn("share", "float", description="the challenger's share in the phase"),
        TableColumn("champion_posts", "int", description=f"matured posts of {champion_model}"),
        TableColumn("challenger_posts", "int", description=f"matured posts of {challenger_model}"),
        TableColumn("champion_rate", "float", description="engagement rate (regression-adjusted when adjusting)"),
        TableColumn("challenger_rate", "float"),
        TableColumn("lift", "float"),
        TableColumn("standard_error", "float"),
        TableColumn("information", "float", description="posts x share x (1 - share): the phase's weight"),
        TableColumn("srm_p_value", "float", description="sequential sample-ratio test of the phase's split"),
    ]
    records = [
        TableRecord(
            {
                "phase": index,
                "share": phase.share,
                "champion_posts": phase.n_control,
                "challenger_posts": phase.n_treatment,
                "champion_rate": _plain(phase.rate_control),
                "challenger_rate": _plain(phase.rate_treatment),
                "lift": _plain(phase.lift),
                "standard_error": _plain(phase.standard_error),
                "information": _plain(phase.information),
                "srm_p_value": _plain(phase.srm_p_value),
            }
        )
        for index, phase in enumerate(analysis.phases, start=1)
    ]
    return MetadataValue.table(records, TableSchema(columns=columns))


def looks_table(looks: Sequence[LookRecord]) -> MetadataValue:
    """Every look of the experiment so far: the statistic against its boundary, and the share."""
    columns = [
        TableColumn("look", "int"),
        TableColumn("evaluated_at"),
        TableColumn("share", "float", description="the challenger's share in force at the look"),
        TableColumn("information_fraction", "float", description="effective posts / the plan's maximum"),
        TableColumn("statistic", "float", description="z of the lift (minus the minimum lift)"),
        TableColumn("boundary", "float", description="promote when the statistic reaches it"),
        TableColumn("alpha_spent", "float", description="cumulative false-promotion rate spent"),
        TableColumn("lift", "float"),
        TableColumn("decision"),
    ]
    records = [
        TableRecord(
            {
                "look": look.look_number,
                "evaluated_at": look.evaluated_at.strftime("%Y-%m-%d %H:%M"),
                "share": look.challenger_share,
                "information_fraction": _plain(look.information_fraction),
                "statistic": _plain(look.statistic),
                # JSON has no infinity: a look with nothing left to spend shows none.
                "boundary": _plain(look.boundary)
                if look.boundary is not None and math.isfinite(look.boundary)
                else None,
                "alpha_spent": _plain(look.alpha_spent),
                "lift": _plain((look.analysis or {}).get("lift")),
                "decision": look.decision,
            }
        )
        for look in looks
    ]
    return MetadataValue.table(records, TableSchema(columns=columns))


def boundary_plot(looks: Sequence[LookRecord], analysis: LookAnalysis) -> MetadataValue:
    """Two panels over the looks: the lift with its always-valid interval, then the z statistic
    against the boundary with the challenger's share on a second axis (PNG inside markdown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 5), dpi=100, sharex=True)
    numbers_ = [look.look_number for look in looks]
    with_lift = [(look.look_number, look.analysis or {}) for look in looks]
    with_lift = [(n, a) for n, a in with_lift if a.get("lift") is not None and a.get("ci_lower") is not None]
    if with_lift:
        top.errorbar(
            [n for n, _ in with_lift],
            [a["lift"] for _, a in with_lift],
            yerr=[[a["lift"] - a["ci_lower"] for _, a in with_lift], [a["ci_upper"] - a["lift"] for _, a in with_lift]],
            fmt="o",
            capsize=3,
            label="lift, always-valid interval",
        )
    top.axhline(0, color="grey", linewidth=1)
    top.set_ylabel("relative lift")
    if with_lift:
        top.legend(loc="best", fontsize=8)
    statistics = [(look.look_number, look.statistic) for look in looks if look.statistic is not None]
    bounds = [
        (look.look_number, look.boundary)
        for look in looks
        if look.boundary is not None and math.isfinite(look.boundary)
    ]
    if statistics:
        bottom.plot([n for n, _ in statistics], [z for _, z in statistics], "o-", label="z statistic")
    if bounds:
        bottom.plot([n for n, _ in bounds], [b for _, b in bounds], "s--", color="firebrick", label="efficacy boundary")
    bottom.set_xlabel("look")
    bottom.set_ylabel("z")
    share_axis = bottom.twinx()
    share_axis.step(
        numbers_, [look.challenger_share for look in looks], where="post", color="grey", alpha=0.6, label="share"
    )
    share_axis.set_ylim(0, 1)
    share_axis.set_ylabel("challenger share")
    if statistics or bounds:
        bottom.legend(loc="upper left", fontsize=8)
    figure.suptitle(f"{analysis.rule.replace('_', '-')} rule", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    png = base64.b64encode(buffer.getvalue()).decode()
    return MetadataValue.md(
        f"![lift, z statistic against the boundary, and share per look](data:image/png;base64,{png})"
    )


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
