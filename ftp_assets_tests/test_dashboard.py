"""deploy/grafana's dashboard is valid Grafana JSON whose every query parses and reads a published metric.

Grafana does not run here, so the dashboard is not rendered: its structure is checked, each query is
parsed by promtool (as a recording rule, since promtool 2.42 has no command that parses a bare
expression) after Grafana's variables are replaced by values, every `ftp_...` name a query reads is in
the metrics catalogue and every catalogued metric is on some panel. The ConfigMap for Grafana's
dashboard sidecar is generated from the same JSON by kustomize (deploy/grafana/kustomization.yaml),
so the JSON exists once; the test checks the generator points at it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ftp_assets.adapters.metrics import METRICS
from ftp_assets_tests.fixtures.prometheus import promtool

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA / "ftp-assets-dashboard.json"
KUSTOMIZATION_FILE = GRAFANA / "kustomization.yaml"
DOCS_FILE = ROOT / "docs" / "observability.md"
CONFIGMAP_NAME = "ftp-assets-grafana-dashboard"
# The label the Grafana Helm chart's dashboard sidecar (kube-prometheus-stack's too) watches by default.
SIDECAR_LABEL = ("grafana_dashboard", "1")
DATASOURCE = "${datasource}"
GRID_COLUMNS = 24
TASKS = ("hook", "body")
# Catalogued metrics that no panel shows, each with its reason. Empty: the dashboard covers the catalogue.
NOT_ON_THE_DASHBOARD: dict[str, str] = {}
# Grafana's variables as they are replaced before a query is parsed; longer names first, so that
# `$__range_s` is not read as `$__range` followed by `_s`.
VARIABLES = {
    "${task}": "|".join(TASKS),
    "$task": "|".join(TASKS),
    "$__rate_interval": "5m",
    "$__interval_ms": "60000",
    "$__interval": "1m",
    "$__range_ms": "7776000000",
    "$__range_s": "7776000",
    "$__range": "90d",
}
METRIC_NAME = re.compile(r"\bftp_[A-Za-z0-9_]+")
STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD_FILE.open() as f:
        return json.load(f)


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels a collapsed row holds."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def is_row(panel: dict[str, Any]) -> bool:
    return panel["type"] == "row"


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) of every PromQL query: the panels' targets and the annotations'."""
    for panel in all_panels(dashboard):
        for n, target in enumerate(panel.get("targets", []), start=1):
            yield f"panel_{panel['id']}_{n}", target["expr"]
    for n, annotation in enumerate(dashboard["annotations"]["list"], start=1):
        if "expr" in annotation:
            yield f"annotation_{n}", annotation["expr"]


def concrete(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The `ftp_...` names an expression reads (label values in quotes are not names)."""
    return set(METRIC_NAME.findall(STRING_LITERAL.sub('""', expr)))


def variable(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    matching = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    assert len(matching) == 1, f"one template variable named {name}"
    return matching[0]


def dashboard_section(docs: str) -> str:
    start = docs.index("## The Grafana dashboard")
    end = docs.find("\n## ", start + 1)
    return docs[start:] if end == -1 else docs[start:end]


# --- the JSON ------------------------------------------------------------------------------------


def test_the_dashboard_is_identified_by_its_uid_and_title_and_shows_ninety_days():
    dashboard = load_dashboard()

    assert dashboard["uid"] == "ftp-assets"
    assert dashboard["title"] == "ftp_assets: the fine-tuning loop"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["time"] == {"from": "now-90d", "to": "now"}
    # A dashboard loaded by the sidecar or imported gets its database id from Grafana.
    assert dashboard.get("id") is None


def test_the_datasource_and_task_variables_let_the_reader_pick_a_prometheus_and_tasks():
    dashboard = load_dashboard()

    datasource = variable(dashboard, "datasource")
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    task = variable(dashboard, "task")
    assert task["type"] == "query"
    assert task["datasource"]["uid"] == DATASOURCE
    assert task["definition"] == "label_values(ftp_posts_selected, task)"
    assert task["query"]["query"] == task["definition"]
    assert task["multi"] is True and task["includeAll"] is True


def test_panel_ids_are_unique_and_every_panel_has_a_title_and_a_query_per_target():
    panels = list(all_panels(load_dashboard()))

    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    for panel in panels:
        assert panel.get("title", "").strip(), f"panel {panel['id']} has no title"
        if is_row(panel):
            continue
        assert panel.get("targets"), f"panel {panel['id']} ({panel['title']}) has no target"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"panel {panel['id']} repeats a refId"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"a target of panel {panel['id']} has no expr"


def test_every_panel_and_query_reads_the_datasource_the_reader_picked():
    dashboard = load_dashboard()

    for panel in all_panels(dashboard):
        if is_row(panel):
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"]["uid"] == DATASOURCE, annotation["name"]


def test_per_task_queries_follow_the_task_variable():
    """Every query of a per-task metric selects `task=~"$task"`; the runs stage's have no task."""
    for where, expr in queries(load_dashboard()):
        names = metric_names(expr)
        per_task = {name for name in names if name in METRICS and METRICS[name].per_task}
        for name in per_task:
            assert re.search(rf'{name}\{{[^}}]*task=~"\$task"', expr), f"{where}: {name} ignores $task in {expr}"
        if not per_task:
            assert "$task" not in expr, f"{where}: {expr} selects a task on a metric that has none"


def test_panels_fit_the_24_column_grid_without_overlapping():
    occupied: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0, panel["title"]
        assert x + w <= GRID_COLUMNS, f"{panel['title']} ends at column {x + w}"
        if is_row(panel):
            assert (x, w, h) == (0, GRID_COLUMNS, 1), panel["title"]
        for cell in ((column, line) for column in range(x, x + w) for line in range(y, y + h)):
            assert cell not in occupied, f"{panel['title']} overlaps {occupied[cell]} at {cell}"
            occupied[cell] = panel["title"]


def test_panels_are_listed_in_reading_order():
    """Grafana lays panels out by gridPos, but JSON in reading order keeps rows and their panels together."""
    positions = [(panel["gridPos"]["y"], panel["gridPos"]["x"]) for panel in load_dashboard()["panels"]]
    assert positions == sorted(positions)


# --- the queries ---------------------------------------------------------------------------------


def test_every_query_parses_with_promtool(tmp_path):
    executable = promtool()
    rules = [{"record": f"dashboard:{where}", "expr": concrete(expr)} for where, expr in queries(load_dashboard())]
    assert rules
    for rule in rules:
        assert "$" not in rule["expr"], f"a Grafana variable is left in {rule['expr']}: add it to VARIABLES"
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))

    result = subprocess.run(
        [executable, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60, check=False
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool check rules failed:\n{output}"
    assert f"SUCCESS: {len(rules)} rules found" in output, output


def test_every_metric_a_query_reads_is_published():
    dashboard = load_dashboard()
    read = {(where, name) for where, expr in queries(dashboard) for name in metric_names(expr)}
    read |= {("task variable", name) for name in metric_names(variable(dashboard, "task")["definition"])}

    unknown = sorted((where, name) for where, name in read if name not in METRICS)
    assert not unknown, f"queries read metrics that ftp_assets.adapters.metrics does not publish: {unknown}"


def test_every_published_metric_is_on_a_panel():
    shown = {
        name
        for panel in all_panels(load_dashboard())
        for t in panel.get("targets", [])
        for name in metric_names(t["expr"])
    }

    missing = sorted(set(METRICS) - shown - set(NOT_ON_THE_DASHBOARD))
    assert not missing, f"catalogued metrics no panel shows (add a panel or to NOT_ON_THE_DASHBOARD): {missing}"
    stale = sorted(set(NOT_ON_THE_DASHBOARD) - (set(METRICS) - shown))
    assert not stale, f"NOT_ON_THE_DASHBOARD lists metrics that are shown or not catalogued: {stale}"


# --- the ConfigMap and the docs ------------------------------------------------------------------


def test_the_kustomization_makes_the_sidecars_configmap_from_the_dashboard_json():
    """kustomize's configMapGenerator keys each file by its name and labels the ConfigMap with
    generatorOptions.labels; without the name hash an edited dashboard replaces its ConfigMap."""
    with KUSTOMIZATION_FILE.open() as f:
        kustomization = yaml.safe_load(f)

    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {"apiVersion", "kind", "generatorOptions", "configMapGenerator"}
    options = kustomization["generatorOptions"]
    assert options["disableNameSuffixHash"] is True
    assert options["labels"] == dict([SIDECAR_LABEL])
    [generator] = kustomization["configMapGenerator"]
    assert generator["name"] == CONFIGMAP_NAME
    assert generator["files"] == [DASHBOARD_FILE.name]
    assert (GRAFANA / generator["files"][0]).resolve() == DASHBOARD_FILE.resolve()


def test_no_other_copy_of_the_dashboard_json_can_drift():
    copies = [path.name for path in GRAFANA.iterdir() if path != DASHBOARD_FILE and path.suffix in {".json", ".yaml"}]
    assert copies == [KUSTOMIZATION_FILE.name]


def test_the_docs_describe_every_panel():
    section = dashboard_section(DOCS_FILE.read_text())

    undocumented = [p["title"] for p in all_panels(load_dashboard()) if p["title"] not in section]
    assert not undocumented, f"docs/observability.md's dashboard section does not describe: {undocumented}"
    assert "kubectl apply -k deploy/grafana" in section
