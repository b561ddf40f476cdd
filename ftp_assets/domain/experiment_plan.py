"""An experiment's plan and its looks: plain values stored in the experiments table.

The plan is fixed when the experiment starts (``ExperimentPlan``): the decision rule, its error
rate, the maximum information, the traffic ramp and the covariates known before assignment. Each
evaluation is a look (``LookData``): per phase of the ramp, per arm, the sufficient statistics of
the matured posts so far (``ArmSums``), covariate sums included. :mod:`ftp_assets.domain.planned_looks`
analyzes a plan and its looks; this module only holds the values and their JSON form.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from ftp_assets.domain.ab_stats import ArmStats, insufficient_data_reason

Rule = Literal["group_sequential", "always_valid"]
RULES: tuple[Rule, ...] = ("group_sequential", "always_valid")
COVARIATE_NAMES = ("persona_rate", "weekday_rate", "hour_rate")


@dataclass(frozen=True)
class ArmSums:
    """One arm's posts in one phase: the :class:`ArmStats` sums and, when adjusting, the sums of
    the covariate vector ``w`` (one entry per covariate): Σw, Σwwᵀ, Σx·w and Σy·w.

    With no covariates the covariate fields are empty tuples.
    """

    n: int = 0
    sum_x: float = 0.0
    sum_y: float = 0.0
    sum_x2: float = 0.0
    sum_y2: float = 0.0
    sum_xy: float = 0.0
    sum_w: tuple[float, ...] = ()
    sum_ww: tuple[tuple[float, ...], ...] = ()
    sum_xw: tuple[float, ...] = ()
    sum_yw: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self.stats()  # the ArmStats checks: whole non-negative n, finite sums, possible moments
        object.__setattr__(self, "n", int(float(self.n)))
        for name in ("sum_x", "sum_y", "sum_x2", "sum_y2", "sum_xy"):
            object.__setattr__(self, name, float(getattr(self, name)))
        d = len(self.sum_w)
        vectors = {name: tuple(float(v) for v in getattr(self, name)) for name in ("sum_w", "sum_xw", "sum_yw")}
        matrix = tuple(tuple(float(v) for v in row) for row in self.sum_ww)
        if any(len(vector) != d for vector in vectors.values()) or len(matrix) != d or any(len(r) != d for r in matrix):
            raise ValueError(f"the covariate sums must all have {d} entries (sum_ww {d}x{d})")
        if not all(math.isfinite(v) for vector in (*vectors.values(), *matrix) for v in vector):
            raise ValueError("covariate sums must be finite")
        for name, vector in vectors.items():
            object.__setattr__(self, name, vector)
        object.__setattr__(self, "sum_ww", matrix)

    @property
    def covariates(self) -> int:
        return len(self.sum_w)

    def stats(self) -> ArmStats:
        return self._stats

    # Cached: an analysis reads each arm's ArmStats several times a look. ArmStats converts the
    # values exactly as __post_init__ does, so the first call (from __post_init__) is already right.
    @functools.cached_property
    def _stats(self) -> ArmStats:
        return ArmStats(self.n, self.sum_x, self.sum_y, self.sum_x2, self.sum_y2, self.sum_xy)

    def without_covariates(self) -> ArmSums:
        return ArmSums(self.n, self.sum_x, self.sum_y, self.sum_x2, self.sum_y2, self.sum_xy)

    @classmethod
    def empty(cls, covariates: int = 0) -> ArmSums:
        zeros = (0.0,) * covariates
        return cls(sum_w=zeros, sum_ww=(zeros,) * covariates, sum_xw=zeros, sum_yw=zeros)

    @classmethod
    def from_arrays(cls, x: ArrayLike, y: ArrayLike, w: ArrayLike | None = None) -> ArmSums:
        """Sums of per-post engagements ``x``, impressions ``y`` and covariates ``w`` (posts × covariates)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError(f"x and y must be 1-D arrays of the same length, got shapes {x.shape} and {y.shape}")
        base = dict(
            n=x.size,
            sum_x=x.sum(),
            sum_y=y.sum(),
            sum_x2=(x * x).sum(),
            sum_y2=(y * y).sum(),
            sum_xy=(x * y).sum(),
        )
        if w is None:
            return cls(**base)
        w = np.asarray(w, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != x.size:
            raise ValueError(f"w must be a (posts, covariates) array with {x.size} rows, got shape {w.shape}")
        return cls(
            **base,
            sum_w=tuple(w.sum(axis=0)),
            sum_ww=tuple(map(tuple, w.T @ w)),
            sum_xw=tuple(x @ w),
            sum_yw=tuple(y @ w),
        )

    def __add__(self, other: ArmSums) -> ArmSums:
        if self.covariates != other.covariates:
            raise ValueError(f"cannot add sums of {self.covariates} and {other.covariates} covariates")
        return ArmSums(
            self.n + other.n,
            self.sum_x + other.sum_x,
            self.sum_y + other.sum_y,
            self.sum_x2 + other.sum_x2,
            self.sum_y2 + other.sum_y2,
            self.sum_xy + other.sum_xy,
            tuple(a + b for a, b in zip(self.sum_w, other.sum_w, strict=True)),
            tuple(
                tuple(a + b for a, b in zip(ra, rb, strict=True))
                for ra, rb in zip(self.sum_ww, other.sum_ww, strict=True)
            ),
            tuple(a + b for a, b in zip(self.sum_xw, other.sum_xw, strict=True)),
            tuple(a + b for a, b in zip(self.sum_yw, other.sum_yw, strict=True)),
        )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return values if self.covariates else {key: values[key] for key in list(values)[:6]}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ArmSums:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown arm sums {sorted(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class Phase:
    """A span of the experiment at one challenger share: posts created in [starts_at, ends_at)."""

    share: float
    starts_at: datetime
    ends_at: datetime | None = None  # None: the phase in force

    def __post_init__(self) -> None:
        if not 0 < self.share < 1:
            raise ValueError(f"a phase's challenger share must lie in (0, 1), got {self.share!r}")
        if self.starts_at.tzinfo is None or (self.ends_at is not None and self.ends_at.tzinfo is None):
            raise ValueError("a phase's times must carry their time zone")
        if self.ends_at is not None and not self.ends_at > self.starts_at:
            raise ValueError(f"a phase must end after it starts: {self.starts_at} to {self.ends_at}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "starts_at": self.starts_at.isoformat(),
            "ends_at": None if self.ends_at is None else self.ends_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Phase:
        ends_at = values.get("ends_at")
        return cls(
            share=float(values["share"]),
            starts_at=datetime.fromisoformat(values["starts_at"]),
            ends_at=None if ends_at is None else datetime.fromisoformat(ends_at),
        )


def phases_to_json(phases: Sequence[Phase]) -> str:
    return json.dumps([phase.to_dict() for phase in phases])


def phases_from_json(text: str) -> tuple[Phase, ...]:
    return tuple(Phase.from_dict(values) for values in json.loads(text))


def ramped_phases(
    phases: Sequence[Phase], *, share: float, switch_at: datetime, grace_minutes: float
) -> tuple[Phase, ...]:
    """The phases after the share changes at ``switch_at``: the phase in force ends ``grace_minutes``
    before the switch and the new one starts as long after it, so the posts an agent may have routed
    with either share (it reads the change late, or its clock is off) belong to neither phase."""
    if not phases or phases[-1].ends_at is not None:
        raise ValueError("the last phase must be the one in force (no end)")
    grace = timedelta(minutes=grace_minutes)
    current = phases[-1]
    if switch_at - grace <= current.starts_at:
        raise ValueError(f"a switch at {switch_at.isoformat()} leaves the current phase empty")
    closed = Phase(current.share, current.starts_at, switch_at - grace)
    return (*phases[:-1], closed, Phase(share, switch_at + grace))


@dataclass(frozen=True)
class Covariates:
    """Pre-experiment engagement rates the posts' covariates are read from, fixed at the start.

    A post's covariate vector is (its persona's rate, its weekday's rate, its hour's rate), each
    Σengagements/Σimpressions over the matured posts of the weeks before the experiment (UTC
    weekday, Monday = 0, and hour). A persona not seen then gets ``overall_rate``.
    """

    persona_rates: Mapping[str, float]
    weekday_rates: tuple[float, ...]  # 7, Monday first
    hour_rates: tuple[float, ...]  # 24
    overall_rate: float
    posts: int  # the pre-experiment posts they come from
    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if len(self.weekday_rates) != 7 or len(self.hour_rates) != 24:
            raise ValueError("covariates need 7 weekday rates and 24 hour rates")
        rates = [*self.persona_rates.values(), *self.weekday_rates, *self.hour_rates, self.overall_rate]
        if not all(math.isfinite(r) and r >= 0 for r in rates):
            raise ValueError("covariate rates must be finite and non-negative")

    def values(self, persona_id: str | None, created_at: datetime) -> tuple[float, float, float]:
        """The covariate vector of a post, its weekday and hour read in UTC."""
        created_at = created_at.astimezone(UTC)
        persona = self.persona_rates.get(persona_id or "", self.overall_rate)
        return persona, self.weekday_rates[created_at.weekday()], self.hour_rates[created_at.hour]

    def to_dict(self) -> dict[str, Any]:
        return {
            "persona_rates": dict(self.persona_rates),
            "weekday_rates": list(self.weekday_rates),
            "hour_rates": list(self.hour_rates),
            "overall_rate": self.overall_rate,
            "posts": self.posts,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Covariates:
        return cls(
            persona_rates={str(k): float(v) for k, v in values["persona_rates"].items()},
            weekday_rates=tuple(float(v) for v in values["weekday_rates"]),
            hour_rates=tuple(float(v) for v in values["hour_rates"]),
            overall_rate=float(values["overall_rate"]),
            posts=int(values["posts"]),
            since=datetime.fromisoformat(values["since"]),
            until=datetime.fromisoformat(values["until"]),
        )


@dataclass(frozen=True)
class PreExperimentCell:
    """Matured pre-experiment posts of one persona, UTC weekday (Monday = 0) and hour."""

    persona_id: str
    weekday: int
    hour: int
    posts: int
    sum_x: float
    sum_y: float


# Impressions of prior weight pulling a sparse persona, weekday or hour towards the overall rate.
SHRINKAGE_IMPRESSIONS = 5000.0


def fit_covariates(
    cells: Sequence[PreExperimentCell], *, since: datetime, until: datetime, minimum_posts: int = 200
) -> Covariates | None:
    """The pre-experiment rates, or None when there are fewer than ``minimum_posts`` posts or no
    impressions (no usable covariate: the analysis is unadjusted). Each rate is shrunk towards the overall
    rate by :data:`SHRINKAGE_IMPRESSIONS` impressions, so a persona seen in few posts stays near it."""
    posts = sum(cell.posts for cell in cells)
    total_x = sum(cell.sum_x for cell in cells)
    total_y = sum(cell.sum_y for cell in cells)
    if posts < minimum_posts or total_y <= 0:
        return None
    overall = total_x / total_y

    def shrunk(selected: Sequence[PreExperimentCell]) -> float:
        x = sum(cell.sum_x for cell in selected)
        y = sum(cell.sum_y for cell in selected)
        return (x + SHRINKAGE_IMPRESSIONS * overall) / (y + SHRINKAGE_IMPRESSIONS)

    personas = sorted({cell.persona_id for cell in cells})
    return Covariates(
        persona_rates={p: shrunk([c for c in cells if c.persona_id == p]) for p in personas},
        weekday_rates=tuple(shrunk([c for c in cells if c.weekday == d]) for d in range(7)),
        hour_rates=tuple(shrunk([c for c in cells if c.hour == h]) for h in range(24)),
        overall_rate=overall,
        posts=posts,
        since=since,
        until=until,
    )


@dataclass(frozen=True)
class ExperimentPlan:
    """Everything the decision depends on, fixed when the experiment starts.

    ``alpha`` is one-sided for the group-sequential rule (the false-promotion rate) and two-sided
    for the always-valid rule (its interval's level, as before plans existed).
    ``maximum_information`` is in effective posts, Σ over phases of posts·share·(1 − share) (the
    information of the lift up to the per-post variance; see planned_looks).
    """

    rule: Rule
    alpha: float
    maximum_information: float | None  # required by the group-sequential rule
    maximum_information_basis: str  # how it was planned, in words
    started_at: datetime
    max_duration_hours: float = 168.0
    maturity_hours: float = 24.0  # a post counts once this old, at every look
    spending: str = "obrien_fleming"  # a SpendingFunction family of group_sequential.py
    spending_gamma: float | None = None
    minimum_lift: float = 0.0
    initial_share: float = 0.1
    ramped_share: float = 0.5  # equal to initial_share: no ramp
    ramp_min_challenger_posts: int = 200
    ramp_grace_minutes: float = 60.0
    guardrail_alpha: float = 0.05  # two-sided level of the always-valid interval of the harm checks
    srm_alpha: float = 0.001
    srm_prior_concentration: float = 1000.0
    sequential_tuning: float = 5000.0  # total posts where the always-valid interval is tightest
    covariates: Covariates | None = None
    covariates_note: str = ""  # why there are none, when there are none
    version: int = 1

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown decision rule {self.rule!r}; one of {', '.join(RULES)}")
        for name in ("alpha", "guardrail_alpha", "srm_alpha"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
        for name in ("initial_share", "ramped_share"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
        if self.ramped_share < self.initial_share:
            raise ValueError("the ramp only raises the challenger's share: ramped_share >= initial_share")
        information = self.maximum_information
        if information is None and self.rule == "group_sequential":
            raise ValueError("the group-sequential rule needs a maximum information")
        if information is not None and not (math.isfinite(information) and information > 0):
            raise ValueError(f"maximum_information must be positive, got {information!r}")
        if not self.max_duration_hours > 0:
            raise ValueError(f"max_duration_hours must be positive, got {self.max_duration_hours!r}")
        if not self.minimum_lift >= 0:
            raise ValueError(f"minimum_lift must be >= 0, got {self.minimum_lift!r}")
        if self.started_at.tzinfo is None:
            raise ValueError("started_at must carry its time zone")
        if self.ramps and self.ramp_grace_minutes > 60 * self.maturity_hours:
            raise ValueError("the ramp's grace window cannot exceed the maturity: it would drop counted posts")

    @property
    def ramps(self) -> bool:
        return self.ramped_share > self.initial_share

    def to_json(self) -> str:
        values = asdict(self)
        values["started_at"] = self.started_at.isoformat()
        values["covariates"] = None if self.covariates is None else self.covariates.to_dict()
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExperimentPlan:
        values = json.loads(text)
        values["started_at"] = datetime.fromisoformat(values["started_at"])
        if values.get("covariates") is not None:
            values["covariates"] = Covariates.from_dict(values["covariates"])
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass(frozen=True)
class PhaseLook:
    """One phase at one look: its share and each arm's sums so far (cumulative)."""

    share: float
    control: ArmSums = field(default_factory=ArmSums)
    treatment: ArmSums = field(default_factory=ArmSums)

    def to_dict(self) -> dict[str, Any]:
        return {"share": self.share, "control": self.control.to_dict(), "treatment": self.treatment.to_dict()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PhaseLook:
        return cls(
            share=float(values["share"]),
            control=ArmSums.from_dict(values["control"]),
            treatment=ArmSums.from_dict(values["treatment"]),
        )

    @functools.cached_property
    def estimable(self) -> bool:
        """Whether the phase gives a lift with a positive variance: ab_stats finds enough data
        and the posts' rates are not all the same (LookData caches what depends on it)."""
        control, treatment = self.control.stats(), self.treatment.stats()
        if insufficient_data_reason(control, treatment) is not None:
            return False
        return control.rate_unit_variance() > 0 or treatment.rate_unit_variance() > 0

    @property
    def information(self) -> float:
        """Effective posts: posts·share·(1 − share); zero for a phase that is not estimable."""
        if not self.estimable:
            return 0.0
        return (self.control.n + self.treatment.n) * self.share * (1 - self.share)


@dataclass(frozen=True)
class LookData:
    """What one evaluation saw: per phase (in order), both arms' sums of the matured posts."""

    evaluated_at: datetime
    phases: tuple[PhaseLook, ...]

    # Cached: the analysis of every later look reads these of every earlier one.
    @functools.cached_property
    def information(self) -> float:
        """Effective posts over the phases that have an estimate (a phase without one, whose
        challenger has no posts yet say, adds nothing to the statistic nor to the information)."""
        return sum(phase.information for phase in self.phases)

    @functools.cached_property
    def covariate_widths(self) -> frozenset[int]:
        return frozenset(arm.covariates for p in self.phases for arm in (p.control, p.treatment))

    def to_json(self) -> str:
        return json.dumps({"evaluated_at": self.evaluated_at.isoformat(), "phases": [p.to_dict() for p in self.phases]})

    @classmethod
    def from_json(cls, text: str) -> LookData:
        values = json.loads(text)
        return cls(
            evaluated_at=datetime.fromisoformat(values["evaluated_at"]),
            phases=tuple(PhaseLook.from_dict(p) for p in values["phases"]),
        )
