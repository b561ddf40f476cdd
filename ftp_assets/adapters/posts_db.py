"""The agent's posts database through SQLAlchemy: one code path for PostgreSQL and SQLite.

We only ever read the agent's posts, inside read-only transactions, and stream them; the schema
here is the data contract (docs/data-contract.md), used by ``ftp-assets db init`` and the demo to create it.
Every query is built here once; only the bulk read of the selection travels differently on
PostgreSQL, through ADBC's driver, so that a million rows arrive as Arrow without Python objects.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, overload

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from ftp_assets.domain.ab_stats import ArmStats
    from ftp_assets.domain.experiment_plan import ArmSums, Covariates, Phase, PreExperimentCell

POSTS_COLUMNS = (
    "id",
    "persona_id",
    "original_input",
    "hook",
    "body",
    "created_at",
    "impressions",
    "engagements",
    "hook_model",
    "body_model",
)


# The columns of the selection, as Arrow reads them.
SELECTION_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("persona_id", pa.string()),
        ("original_input", pa.string()),
        ("hook", pa.string()),
        ("body", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("impressions", pa.int64()),
        ("engagements", pa.int64()),
    ]
)


class PostsDatabaseError(Exception):
    """A problem with the posts database that the user can fix; the message says what."""


class UTCDateTime(sa.TypeDecorator):
    """A timestamp stored and returned in UTC on every database. SQLite keeps no offset, so an
    aware time is converted to UTC before it is stored and a naive one is taken as UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return as_utc(value)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return as_utc(value)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A naive time is taken as UTC; an aware one is converted to it."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def posts_table(name: str = "posts", metadata: sa.MetaData | None = None) -> sa.Table:
    metadata = metadata if metadata is not None else sa.MetaData()
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False),
        sa.Column("persona_id", sa.Text, nullable=False),
        sa.Column("original_input", sa.Text),
        sa.Column("hook", sa.Text),
        sa.Column("body", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("impressions", sa.BigInteger, nullable=False),
        sa.Column("engagements", sa.BigInteger, nullable=False),
        sa.Column("hook_model", sa.Text),
        sa.Column("body_model", sa.Text),
        # The weekly window, the data-threshold sensor and the A/B aggregate all filter on
        # created_at first; the model columns narrow the A/B query to the two arms.
        sa.Index(f"ix_{name}_created_at", "created_at"),
        sa.Index(f"ix_{name}_hook_model_created_at", "hook_model", "created_at"),
        sa.Index(f"ix_{name}_body_model_created_at", "body_model", "created_at"),
    )


def table_ddl(table: sa.Table, engine: Engine) -> str:
    """CREATE TABLE and CREATE INDEX statements for the engine's dialect."""
    statements = [str(sa.schema.CreateTable(table).compile(engine))]
    statements += [str(sa.schema.CreateIndex(index).compile(engine)) for index in table.indexes]
    return ";\n".join(statement.strip() for statement in statements) + ";\n"


# driver://[user[:password]@]host[:port][/database][?query]. A password may hold an unencoded
# "@" or "/", so the user's part ends at the last "@" before any "?"; a user name holds no ":",
# "/" or "?", so an "@" in the query (libpq's ?password=p@ss) never ends one.
_URL_PARTS = re.compile(
    r"(?P<driver>[\w+.-]+)://(?:[^:/?@]*(?::[^?]*)?@)?"
    r"(?P<host>\[[^]/?@]*\]|[^:/?@]*)(?::(?P<port>\d*))?(?P<database>/[^?]*)?(?:\?.*)?",
    re.DOTALL,
)


def redacted(url: str | sa.URL) -> str:
    """Only the driver, host, port and database of a URL (a database's, MLflow's), for
    messages and metadata: credentials can sit in the user's part and in the query."""
    text = url.render_as_string(hide_password=False) if isinstance(url, sa.URL) else url
    parts = _URL_PARTS.fullmatch(text)
    if parts is None:
        # Not URL-shaped (MLflow's "databricks", "file:./mlruns"): without a user's part or a
        # query it holds no credentials.
        return "<unparsable URL>" if "@" in text or "?" in text else text
    port = f":{parts['port']}" if parts["port"] else ""
    return f"{parts['driver']}://{parts['host']}{port}{parts['database'] or ''}"


def create_posts_engine(url: str) -> Engine:
    try:
        parsed = sa.make_url(url)
    except Exception:
        raise PostsDatabaseError(
            "FTP_POSTS_DB_URL is not a valid SQLAlchemy URL "
            "(expected e.g. postgresql+psycopg://user@host/db or sqlite:///path/posts.sqlite3)."
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        engine = sa.create_engine(parsed, pool_pre_ping=True)
        with engine.connect():
            pass
    except PostsDatabaseError:
        raise
    except Exception as error:
        # The driver's own message can quote the URL, password included: name the cause only.
        raise PostsDatabaseError(
            f"Cannot connect to the posts database at {redacted(parsed)}: {type(error.__cause__ or error).__name__}."
        ) from None
    return engine


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


# The training window's length unless configured (engaged_posts, the data-threshold sensor).
DEFAULT_WINDOW_DAYS = 7


@dataclass(frozen=True)
class SelectionRule:
    threshold: float = 0.06
    min_impressions: int = 100
    # Counts above this are treated as corrupt (no post of the agent reaches a billion views).
    max_impressions: int = 1_000_000_000


@dataclass(frozen=True)
class TextLimit:
    """The texts a task needs, and how many characters each may have."""

    columns: tuple[str, ...]
    max_chars: int


@dataclass(frozen=True)
class WindowCounts:
    funnel: dict[str, int]  # the window's posts, and those the rule leaves out, by reason
    rejected: dict[str, int]  # posts the rule takes but the selection leaves out: missing_id, too_long


@dataclass(frozen=True)
class ArmOutcomes:
    control: ArmStats
    treatment: ArmStats
    data_until: datetime | None  # the newest post included
    excluded_impossible: int  # posts of either arm left out for impossible counts


@dataclass(frozen=True)
class PhaseOutcomes:
    phases: tuple[tuple[ArmSums, ArmSums], ...]  # per phase, in order: (control, treatment)
    data_until: datetime | None  # the newest post included
    excluded_impossible: int  # posts of either arm in any phase left out for impossible counts


class PostsDatabase:
    def __init__(self, url: str, table: str = "posts"):
        self.url = url
        self.engine = create_posts_engine(url)
        self.table = posts_table(table)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def init_schema(self) -> None:
        """Create the posts table and its indexes if missing; never touches existing data."""
        self.table.metadata.create_all(self.engine, checkfirst=True)

    def schema_sql(self) -> str:
        return table_ddl(self.table, self.engine)

    def check_table(self) -> None:
        inspector = sa.inspect(self.engine)
        names = set(inspector.get_table_names()) | set(inspector.get_view_names())
        if self.table.name not in names:
            raise PostsDatabaseError(
                f"The posts relation {self.table.name!r} does not exist in {redacted(self.url)}; "
                "run `ftp-assets db init` or create a view with the contract's columns (see docs/data-contract.md)."
            )
        columns = {column["name"] for column in inspector.get_columns(self.table.name)}
        missing = [c for c in POSTS_COLUMNS if c not in columns]
        if missing:
            raise PostsDatabaseError(
                f"The posts relation {self.table.name!r} lacks the contract's columns {', '.join(missing)}."
            )

    def relation_kind(self) -> str | None:
        """``"table"``, ``"view"``, or None when the posts relation does not exist."""
        inspector = sa.inspect(self.engine)
        if self.table.name in inspector.get_table_names():
            return "table"
        if self.table.name in inspector.get_view_names():
            return "view"
        return None

    def contract_problems(self) -> list[str]:
        """What the relation lacks of the contract (this module's ``posts_table``): each missing
        column, and each column whose type is not of the contract's kind (integer, text,
        timestamp). A type the database does not report (a SQLite view's expression) passes."""
        reflected = {column["name"]: column["type"] for column in sa.inspect(self.engine).get_columns(self.table.name)}
        problems = [f"no column {name}" for name in POSTS_COLUMNS if name not in reflected]
        for name in POSTS_COLUMNS:
            found = reflected.get(name)
            if found is None or isinstance(found, sa.types.NullType):
                continue
            expected = self.table.c[name].type
            kind = next(k for k in (sa.Integer, sa.DateTime, sa.String) if isinstance(_impl(expected), k))
            if not isinstance(found, kind):
                problems.append(f"{name} is {found}, not {kind.__name__.lower()}")
            elif kind is sa.DateTime and self.is_postgres and not getattr(found, "timezone", False):
                problems.append(f"{name} is {found}, not timestamp with time zone")
        return problems

    def plan_of(self, query: sa.Select) -> list[str]:
        """The database's plan of ``query``, one line per node, in a read-only transaction:
        PostgreSQL's ``EXPLAIN`` with sequential scans discouraged (so the plan shows whether an
        index can serve the query, whatever the table's size today), SQLite's ``EXPLAIN QUERY
        PLAN``. A view's plan is of the tables under it."""
        sql = str(query.compile(self.engine, compile_kwargs={"literal_binds": True}))
        with self.read_only() as conn:
            if self.is_postgres:
                conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
                return [row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql)]
            return [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]

    def time_index_in_plan(self, query: sa.Select) -> tuple[str | None, list[str]]:
        """The index the plan of ``query`` (a selection of a window) searches by a range of the
        creation time, with the plan; None when it reads the rows without one."""
        plan = self.plan_of(query)
        if self.is_postgres:
            index_names = []
            for number, line in enumerate(plan):
                found = re.search(r"Index (?:Only )?Scan(?: Backward)? using (\S+) on|Bitmap Index Scan on (\S+)", line)
                if found:
                    index_names.append((found.group(1) or found.group(2), number))
            for name, number in index_names:
                leading = self._leading_column(name)
                conditions = " ".join(line for line in plan[number + 1 : number + 3] if "Index Cond" in line)
                if leading and re.search(rf"\(?{re.escape(leading)} >= '[^']*'::timestamp", conditions):
                    return name, plan
            return None, plan
        for line in plan:
            found = re.match(r"SEARCH \S+ USING (?:COVERING )?INDEX (\S+) \((\w+)>\? AND \2<\?\)", line)
            if found:
                return found.group(1), plan
        return None, plan

    def _leading_column(self, index: str) -> str | None:
        """The first column of a PostgreSQL index, by its name."""
        query = sa.text(
            "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE c.relname = :name"
        )
        with self.read_only() as conn:
            return conn.execute(query, {"name": index.strip('"')}).scalar()

    def write_privileges(self) -> list[str] | None:
        """The writes the connecting role may make on the posts relation (PostgreSQL's
        ``has_table_privilege``); None on a database without roles (SQLite)."""
        if not self.is_postgres:
            return None
        kinds = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
        relation = self.engine.dialect.identifier_preparer.quote(self.table.name)
        query = sa.select(
            *(sa.func.has_table_privilege(sa.func.current_user(), relation, kind).label(kind) for kind in kinds)
        )
        with self.read_only() as conn:
            row = conn.execute(query).one()._asdict()
        return [kind for kind in kinds if row[kind]]

    @contextmanager
    def read_only(self) -> Iterator[Connection]:
        """A connection in a read-only transaction: this is the agent's production database."""
        with self.engine.connect() as conn:
            if self.is_postgres:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                yield conn
            else:
                conn.exec_driver_sql("PRAGMA query_only = ON")
                try:
                    yield conn
                finally:
                    conn.rollback()
                    conn.exec_driver_sql("PRAGMA query_only = OFF")
            conn.rollback()

    def _rate(self) -> sa.ColumnElement:
        t = self.table.c
        return sa.cast(t.engagements, sa.Float) / sa.func.nullif(t.impressions, 0)

    def _in_window(self, window: Window) -> sa.ColumnElement:
        t = self.table.c
        return sa.and_(t.created_at >= window.start, t.created_at < window.end)

    def possible_counts(self, rule: SelectionRule) -> sa.ColumnElement:
        """Counts a real post can have; anything else is corrupt and left out."""
        t = self.table.c
        return sa.and_(
            t.impressions >= 0,
            t.engagements >= 0,
            t.engagements <= t.impressions,
            t.impressions <= rule.max_impressions,
        )

    def _has_ids(self) -> sa.ColumnElement:
        """The contract's keys are set (a team's view can still produce nulls)."""
        return sa.and_(self.table.c.id.is_not(None), self.table.c.persona_id.is_not(None))

    def _too_long(self, texts: TextLimit) -> sa.ColumnElement:
        """A needed text is over the limit: such a post is never transferred, whatever its size."""

        def over(column: sa.Column) -> sa.ColumnElement:
            chars = sa.func.coalesce(sa.func.length(column), 0) > texts.max_chars
            if not self.is_postgres:
                return chars
            # Over 4 bytes a character is over the limit for sure, and PostgreSQL knows a stored
            # text's size without reading (detoasting) it: a pasted document is never loaded.
            return sa.case((sa.func.octet_length(column) > 4 * texts.max_chars, sa.true()), else_=chars)

        return sa.or_(*(over(self.table.c[name]) for name in texts.columns))

    def selection_query(self, window: Window, rule: SelectionRule, texts: TextLimit | None = None) -> sa.Select:
        """Qualifying posts with their ids, most engaging first (ties by id), so the first of a
        group of duplicates is the one to keep and the order is the same on every run; given
        ``texts``, without the posts whose needed texts are over its limit."""
        t = self.table.c
        rate = self._rate()
        query = (
            sa.select(t.id, t.persona_id, t.original_input, t.hook, t.body, t.created_at, t.impressions, t.engagements)
            .where(self._in_window(window), self.possible_counts(rule))
            .where(t.impressions >= rule.min_impressions, rate >= rule.threshold, self._has_ids())
        )
        if texts is not None:
            query = query.where(sa.not_(self._too_long(texts)))
        return query.order_by(rate.desc(), t.id)

    def window_funnel(self, window: Window, rule: SelectionRule, texts: TextLimit) -> WindowCounts:
        """How the window's posts divide between the selection and each reason to leave one out;
        one aggregate query, so the metadata explains the selection without reading rows."""
        t = self.table.c
        valid = self.possible_counts(rule)
        rate = self._rate()
        qualifies = sa.and_(valid, t.impressions >= rule.min_impressions, rate >= rule.threshold)

        def count_if(condition: sa.ColumnElement) -> sa.ColumnElement:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        query = sa.select(
            sa.func.count().label("in_window"),
            count_if(sa.not_(valid)).label("impossible_counts"),
            count_if(sa.and_(valid, t.impressions == 0)).label("zero_impressions"),
            count_if(sa.and_(valid, t.impressions > 0, t.impressions < rule.min_impressions)).label(
                "below_min_impressions"
            ),
            count_if(
                sa.and_(valid, t.impressions >= rule.min_impressions, t.impressions > 0, rate < rule.threshold)
            ).label("below_threshold"),
            count_if(sa.and_(qualifies, sa.not_(self._has_ids()))).label("missing_id"),
            count_if(sa.and_(qualifies, self._has_ids(), self._too_long(texts))).label("too_long"),
        ).where(self._in_window(window))
        with self.read_only() as conn:
            row = {key: int(value) for key, value in conn.execute(query).one()._asdict().items()}
        rejected = {reason: row.pop(reason) for reason in ("missing_id", "too_long")}
        return WindowCounts(funnel=row, rejected=rejected)

    def count_qualifying(self, window: Window, rule: SelectionRule) -> int:
        """How many posts of the window the selection takes: the selection's own query, counted
        (one index range scan on created_at, so its cost follows the window, not the table)."""
        selected = self.selection_query(window, rule).order_by(None).subquery()
        with self.read_only() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(selected)).scalar_one()

    def stream_selection(
        self, window: Window, rule: SelectionRule, batch_rows: int = 20_000, texts: TextLimit | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The qualifying posts as Arrow record batches of ``SELECTION_SCHEMA``, in the query's
        order. PostgreSQL sends them through ADBC's driver (binary ``COPY``, decoded in C++ with
        the GIL released: no Python object per row); other databases through SQLAlchemy."""
        query = self.selection_query(window, rule, texts)
        if self.is_postgres:
            yield from _rebatched(self._adbc_batches(query), batch_rows)
            return
        with self.read_only() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(query)
            for rows in result.partitions(batch_rows):
                # pyarrow takes SQLite's naive timestamps (stored in UTC) as UTC.
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array(column, type=field.type)
                        for column, field in zip(zip(*rows, strict=True), SELECTION_SCHEMA, strict=True)
                    ],
                    schema=SELECTION_SCHEMA,
                )

    def _adbc_batches(self, query: sa.Select) -> Iterator[pa.RecordBatch]:
        import adbc_driver_postgresql.dbapi as adbc

        # ADBC binds "$1" parameters, SQLAlchemy writes "%(name)s": the literals are our own
        # datetimes and numbers.
        sql = str(query.compile(self.engine, compile_kwargs={"literal_binds": True}))
        uri = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            conn = adbc.connect(uri, autocommit=False)
        except Exception as error:  # its message can quote the URI, password included
            raise PostsDatabaseError(
                f"Cannot connect to the posts database at {redacted(self.url)}: {type(error).__name__}."
            ) from None
        with conn, conn.cursor() as cursor:
            cursor.execute("SET TRANSACTION READ ONLY")
            # Batches of about 4 MB: the driver's default 16 MB costs memory and buys no speed.
            cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(4 << 20)})
            cursor.execute(sql)
            for batch in cursor.fetch_record_batch():
                yield batch.cast(SELECTION_SCHEMA)  # a team's view may use int4 counts
            conn.rollback()

    def insert_posts(self, rows: Iterable[dict], batch_size: int = 5_000) -> int:
        """Insert contract rows (demo data and tests; the agent writes production posts)."""
        inserted = 0
        batch: list[dict] = []
        with self.engine.begin() as conn:
            for row in rows:
                batch.append(row)
                if len(batch) >= batch_size:
                    conn.execute(self.table.insert(), batch)
                    inserted += len(batch)
                    batch = []
            if batch:
                conn.execute(self.table.insert(), batch)
                inserted += len(batch)
        return inserted

    def model_column(self, task: str) -> sa.Column:
        """The column in which the agent records the model that wrote the task's text."""
        return self.table.c.hook_model if task == "hook" else self.table.c.body_model

    def arm_outcomes(
        self,
        task: str,
        *,
        control_model: str,
        treatment_model: str,
        since: datetime,
        matured_before: datetime,
        rule: SelectionRule = SelectionRule(),
    ) -> ArmOutcomes:
        """Both arms' sufficient statistics in one aggregate query: posts written by either model
        since ``since`` and older than the maturity cut-off (the same rule for both arms)."""
        # Imported here: the statistics load SciPy, which the data path does not need.
        from ftp_assets.domain.ab_stats import ArmStats

        t = self.table.c
        model = self.model_column(task)
        possible = self.possible_counts(rule)
        x = sa.cast(t.engagements, sa.Float)
        y = sa.cast(t.impressions, sa.Float)

        def total(value):
            return sa.func.coalesce(sa.func.sum(sa.case((possible, value), else_=0.0)), 0.0)

        query = (
            sa.select(
                model.label("model"),
                sa.func.coalesce(sa.func.sum(sa.case((possible, 1), else_=0)), 0).label("n"),
                total(x).label("sum_x"),
                total(y).label("sum_y"),
                total(x * x).label("sum_x2"),
                total(y * y).label("sum_y2"),
                total(x * y).label("sum_xy"),
                sa.func.max(t.created_at).label("newest"),
                sa.func.coalesce(sa.func.sum(sa.case((possible, 0), else_=1)), 0).label("impossible"),
            )
            .where(model.in_([control_model, treatment_model]))
            .where(t.created_at >= since, t.created_at < matured_before)
            .group_by(model)
        )
        with self.read_only() as conn:
            rows = {row.model: row for row in conn.execute(query)}

        def arm(model_id: str) -> ArmStats:
            row = rows.get(model_id)
            if row is None:
                return ArmStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
            return ArmStats(int(row.n), row.sum_x, row.sum_y, row.sum_x2, row.sum_y2, row.sum_xy)

        newest = [row.newest for row in rows.values() if row.newest is not None]
        return ArmOutcomes(
            control=arm(control_model),
            treatment=arm(treatment_model),
            data_until=max(newest) if newest else None,
            excluded_impossible=sum(int(row.impossible) for row in rows.values()),
        )

    def _utc_weekday_hour(self) -> tuple[sa.ColumnElement, sa.ColumnElement]:
        """The UTC weekday (Monday = 0, as Python's ``weekday()``) and hour of ``created_at``."""
        created_at = self.table.c.created_at
        if self.is_postgres:
            # Explicitly in UTC: EXTRACT on a timestamptz reads it in the session's time zone.
            utc = sa.func.timezone("UTC", created_at)
            weekday = sa.cast(sa.extract("isodow", utc), sa.Integer) - 1
            return weekday, sa.cast(sa.extract("hour", utc), sa.Integer)
        # SQLite stores UTC text; its %w counts from Sunday = 0.
        weekday = (sa.cast(sa.func.strftime("%w", created_at), sa.Integer) + 6) % 7
        return weekday, sa.cast(sa.func.strftime("%H", created_at), sa.Integer)

    def pre_experiment_cells(
        self, *, since: datetime, until: datetime, rule: SelectionRule = SelectionRule()
    ) -> list[PreExperimentCell]:
        """Posts of any model created in [since, until) with possible counts, per persona, UTC
        weekday and hour: the counts the covariates are fitted from, in one aggregate query.
        A post without a persona is counted under "", the key ``Covariates.values`` looks it up by."""
        from ftp_assets.domain.experiment_plan import PreExperimentCell

        t = self.table.c
        weekday, hour = self._utc_weekday_hour()
        # Grouped over a subquery: PostgreSQL matches GROUP BY expressions by their text, and the
        # bound parameters of the time functions would make the select's and the group's differ.
        posts = (
            sa.select(
                sa.func.coalesce(t.persona_id, "").label("persona_id"),
                weekday.label("weekday"),
                hour.label("hour"),
                sa.cast(t.engagements, sa.Float).label("x"),
                sa.cast(t.impressions, sa.Float).label("y"),
            )
            .where(t.created_at >= since, t.created_at < until, self.possible_counts(rule))
            .subquery()
        )
        p = posts.c
        query = (
            sa.select(
                p.persona_id,
                p.weekday,
                p.hour,
                sa.func.count().label("posts"),
                sa.func.sum(p.x).label("sum_x"),
                sa.func.sum(p.y).label("sum_y"),
            )
            .group_by(p.persona_id, p.weekday, p.hour)
            .order_by(p.persona_id, p.weekday, p.hour)
        )
        with self.read_only() as conn:
            return [
                PreExperimentCell(
                    persona_id=row.persona_id,
                    weekday=int(row.weekday),
                    hour=int(row.hour),
                    posts=int(row.posts),
                    sum_x=float(row.sum_x),
                    sum_y=float(row.sum_y),
                )
                for row in conn.execute(query)
            ]

    def phase_outcomes(
        self,
        task: str,
        *,
        control_model: str,
        treatment_model: str,
        phases: Sequence[Phase],
        matured_before: datetime,
        covariates: Covariates | None,
        rule: SelectionRule = SelectionRule(),
    ) -> PhaseOutcomes:
        """Both arms' sums per phase in one aggregate query: posts written by either model in a
        phase ([starts_at, ends_at)) and older than the maturity cut-off. Posts between phases
        (the grace windows of a ramp) belong to none and are left out. Given ``covariates``, the
        sums of each post's covariate vector (``Covariates.values``) come with them."""
        from ftp_assets.domain.experiment_plan import ArmSums

        for before, after in itertools.pairwise(phases):
            if before.ends_at is None or after.starts_at < before.ends_at:
                raise ValueError("phases must follow each other without overlapping; only the last may be open")
        d = 0 if covariates is None else 3
        if not phases:
            return PhaseOutcomes(phases=(), data_until=None, excluded_impossible=0)

        t = self.table.c
        model = self.model_column(task)
        phase_index = sa.case(
            *(
                (
                    t.created_at >= phase.starts_at
                    if phase.ends_at is None
                    else sa.and_(t.created_at >= phase.starts_at, t.created_at < phase.ends_at),
                    k,
                )
                for k, phase in enumerate(phases)
            ),
            else_=None,
        )
        columns = [
            model.label("model"),
            phase_index.label("phase"),
            t.created_at.label("created_at"),
            sa.case((self.possible_counts(rule), 1), else_=0).label("possible"),
            sa.cast(t.engagements, sa.Float).label("x"),
            sa.cast(t.impressions, sa.Float).label("y"),
        ]
        if covariates is not None:
            columns += [w.label(f"w{j}") for j, w in enumerate(self._covariate_columns(covariates))]
        # The overall time range bounds the scan, so the (model, created_at) indexes serve it.
        in_range = [t.created_at >= min(phase.starts_at for phase in phases), t.created_at < matured_before]
        if phases[-1].ends_at is not None:
            in_range.append(t.created_at < phases[-1].ends_at)
        posts = sa.select(*columns).where(model.in_([control_model, treatment_model]), *in_range).subquery()
        p = posts.c

        def total(value: sa.ColumnElement) -> sa.ColumnElement:
            return sa.func.coalesce(sa.func.sum(sa.case((p.possible == 1, value), else_=0.0)), 0.0)

        w = [p[f"w{j}"] for j in range(d)]
        pairs = [(j, k) for j in range(d) for k in range(j, d)]
        query = (
            sa.select(
                p.model,
                p.phase,
                sa.func.coalesce(sa.func.sum(p.possible), 0).label("n"),
                total(p.x).label("sum_x"),
                total(p.y).label("sum_y"),
                total(p.x * p.x).label("sum_x2"),
                total(p.y * p.y).label("sum_y2"),
                total(p.x * p.y).label("sum_xy"),
                *(total(w[j]).label(f"sum_w{j}") for j in range(d)),
                *(total(w[j] * w[k]).label(f"sum_w{j}w{k}") for j, k in pairs),
                *(total(p.x * w[j]).label(f"sum_xw{j}") for j in range(d)),
                *(total(p.y * w[j]).label(f"sum_yw{j}") for j in range(d)),
                sa.func.max(p.created_at).label("newest"),
                sa.func.coalesce(sa.func.sum(1 - p.possible), 0).label("impossible"),
            )
            .where(p.phase.is_not(None))
            .group_by(p.model, p.phase)
        )
        with self.read_only() as conn:
            rows = {(row.model, int(row.phase)): row._mapping for row in conn.execute(query)}

        def arm(model_id: str, index: int) -> ArmSums:
            row = rows.get((model_id, index))
            if row is None:
                return ArmSums.empty(d)
            ww = {(j, k): float(row[f"sum_w{j}w{k}"]) for j, k in pairs}
            return ArmSums(
                n=int(row["n"]),
                sum_x=float(row["sum_x"]),
                sum_y=float(row["sum_y"]),
                sum_x2=float(row["sum_x2"]),
                sum_y2=float(row["sum_y2"]),
                sum_xy=float(row["sum_xy"]),
                sum_w=tuple(float(row[f"sum_w{j}"]) for j in range(d)),
                sum_ww=tuple(tuple(ww[min(j, k), max(j, k)] for k in range(d)) for j in range(d)),
                sum_xw=tuple(float(row[f"sum_xw{j}"]) for j in range(d)),
                sum_yw=tuple(float(row[f"sum_yw{j}"]) for j in range(d)),
            )

        newest = [row["newest"] for row in rows.values() if row["newest"] is not None]
        return PhaseOutcomes(
            phases=tuple((arm(control_model, k), arm(treatment_model, k)) for k in range(len(phases))),
            data_until=max(newest) if newest else None,
            excluded_impossible=sum(int(row["impossible"]) for row in rows.values()),
        )

    def _covariate_columns(self, covariates: Covariates) -> list[sa.ColumnElement]:
        """A post's covariate vector as ``Covariates.values`` defines it: its persona's rate (a
        missing persona is looked up as "", an unknown one gets the overall rate), then its UTC
        weekday's and hour's rates."""

        def rate(value: float) -> sa.ColumnElement:
            return sa.literal(float(value), sa.Float)

        overall = rate(covariates.overall_rate)
        persona = (
            sa.case(
                {name: rate(value) for name, value in covariates.persona_rates.items()},
                value=sa.func.coalesce(self.table.c.persona_id, ""),
                else_=overall,
            )
            if covariates.persona_rates
            else overall
        )
        weekday, hour = self._utc_weekday_hour()
        return [
            persona,
            sa.case({day: rate(value) for day, value in enumerate(covariates.weekday_rates)}, value=weekday),
            sa.case({h: rate(value) for h, value in enumerate(covariates.hour_rates)}, value=hour),
        ]

    def first_post_at(self, *, since: datetime, until: datetime) -> datetime | None:
        """The oldest post created in [since, until), None when there is none: where a history
        shorter than the window starts, so a post rate is not diluted by the weeks before it."""
        t = self.table.c
        query = sa.select(sa.func.min(t.created_at)).where(t.created_at >= since, t.created_at < until)
        with self.read_only() as conn:
            return as_utc(conn.execute(query).scalar())

    def newest_post_by(
        self, task: str, models: Sequence[str], *, since: datetime, matured_before: datetime
    ) -> datetime | None:
        """The cheap question the experiment sensor asks each tick: one index lookup per arm."""
        t = self.table.c
        query = sa.select(sa.func.max(t.created_at)).where(
            self.model_column(task).in_(list(models)),
            t.created_at >= since,
            t.created_at < matured_before,
        )
        with self.read_only() as conn:
            return conn.execute(query).scalar()


def _impl(kind: sa.types.TypeEngine) -> sa.types.TypeEngine:
    """A decorated type's underlying type (``UTCDateTime`` is a ``DateTime``)."""
    return kind.impl_instance if isinstance(kind, sa.TypeDecorator) else kind


def _rebatched(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of ``rows`` (the last one shorter)."""
    pending: list[pa.RecordBatch] = []
    for batch in batches:
        pending.append(batch)
        if sum(piece.num_rows for piece in pending) >= rows:
            combined = pa.concat_batches(pending)
            whole = combined.num_rows - combined.num_rows % rows
            yield from (combined.slice(start, rows) for start in range(0, whole, rows))
            pending = [combined.slice(whole)]
    if sum(piece.num_rows for piece in pending):
        yield pa.concat_batches(pending)
