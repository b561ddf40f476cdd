"""The Prometheus alert rules in deploy/prometheus/: valid, unit-tested, and tied to the metric
catalogue and to their runbooks.

promtool (Debian's `prometheus` package, which CI installs) checks the rule file and runs its unit
tests, ftp-assets-rules.test.yml, on synthetic series. The rest is checked here: the
PrometheusRule holds the very same groups, every metric an expression reads is one the code
location publishes, every alert's runbook is a heading of docs/operations.md, and each of the
conditions the team asked to be paged on has its rule.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ftp_assets.adapters.metrics import METRICS
from ftp_assets_tests.fixtures.prometheus import promtool as promtool_path

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULE_FILE = RULES_DIR / "ftp-assets-rules.yml"
RULE_TESTS = RULES_DIR / "ftp-assets-rules.test.yml"
PROMETHEUS_RULE = RULES_DIR / "prometheusrule.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
OBSERVABILITY = ROOT / "docs" / "observability.md"
RUNBOOK_PAGE = "docs/operations.md"

# The conditions the rules exist for, each with its alert.
CONDITIONS = {
    "no successful training in 8 days": "FtpNoTrainingIn8Days",
    "an experiment past its maximum duration without a decision": "FtpExperimentPastDeadline",
    "three rejected challengers in a row": "FtpChallengersRejectedInARow",
    "the week's fine-tuning cost above the budget": "FtpWeeklyCostOverBudget",
    "training data below the minimum two weeks in a row": "FtpTrainingDataInsufficientTwoWeeks",
    "repeated run failures": "FtpRunsFailingRepeatedly",
    # Beyond the list: without it, every rule above falls silent with its series.
    "the metrics no longer refreshed": "FtpMetricsStale",
}
# A metric name, not a label value such as job="ftp_assets".
METRIC_NAME = re.compile(r"(?<![\"'\w])ftp_[a-z0-9_]+")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Runs promtool; a machine without it fails the test (never skips it): CI has it."""
    return subprocess.run([promtool_path(), *arguments], capture_output=True, text=True, cwd=ROOT, timeout=300)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load(RULE_FILE)["groups"] for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but '-' and '_' dropped
    (backticks included), each space a '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor, outside code blocks; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    in_code = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        match = None if in_code else HEADING.match(line)
        if match is None:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def test_github_anchors_drop_punctuation_and_join_words_with_hyphens():
    assert github_anchor("FtpNoTrainingIn8Days") == "ftpnotrainingin8days"
    assert github_anchor("Alerts and their runbooks") == "alerts-and-their-runbooks"
    assert github_anchor("`ftp-assets doctor`") == "ftp-assets-doctor"
    assert github_anchor("With the self-hosted trainer (`FTP_PROVIDER=self_hosted`)") == (
        "with-the-self-hosted-trainer-ftp_providerself_hosted"
    )
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_the_alert_rules_pass_promtools_check():
    result = promtool("check", "rules", str(RULE_FILE.relative_to(ROOT)))
    assert result.returncode == 0, output(result)


def test_the_alert_rules_pass_promtools_unit_tests():
    result = promtool("test", "rules", str(RULE_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, output(result)


def test_the_unit_tests_check_every_alert_firing_and_not_firing():
    cases: dict[str, dict[str, int]] = {}
    for group in load(RULE_TESTS)["tests"]:
        for case in group.get("alert_rule_test", []):
            counts = cases.setdefault(case["alertname"], {"firing": 0, "quiet": 0})
            counts["firing" if case.get("exp_alerts") else "quiet"] += 1
    for rule in alerts():
        assert cases.get(rule["alert"], {}).get("firing"), f"no unit test sees {rule['alert']} fire"
        assert cases.get(rule["alert"], {}).get("quiet"), f"no unit test sees {rule['alert']} stay quiet"


def test_the_prometheusrule_holds_the_same_groups_as_the_rule_file():
    resource = load(PROMETHEUS_RULE)
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"]
    assert "release" in resource["metadata"]["labels"], "the label a ruleSelector matches, to be set by the operator"
    assert resource["spec"]["groups"] == load(RULE_FILE)["groups"]


def test_the_rule_file_is_one_group_evaluated_every_minute():
    groups = load(RULE_FILE)["groups"]
    assert [(group["name"], group["interval"]) for group in groups] == [("ftp_assets", "1m")]


def test_every_metric_an_alert_reads_is_in_the_catalogue():
    for rule in alerts():
        # The expression, and the queries a description's template may run.
        texts = [rule["expr"], *rule["annotations"].values()]
        names = {name for text in texts for name in METRIC_NAME.findall(text)} - {"ftp_assets"}  # the name, in prose
        if rule["alert"] == "FtpMetricsStale":  # the gateway's own record of our pushes
            assert not names and 'push_time_seconds{job="ftp_assets", stage="runs"}' in rule["expr"]
            continue
        assert names, f"{rule['alert']} reads no ftp_ metric"
        unknown = sorted(names - set(METRICS))
        assert not unknown, f"{rule['alert']} reads metrics the catalogue does not publish: {unknown}"


def test_counters_are_read_through_increase_and_gauges_as_they_are():
    for rule in alerts():
        for name in set(METRIC_NAME.findall(rule["expr"])):
            through_increase = re.search(rf"\b(increase|rate)\(\s*{name}\b", rule["expr"]) is not None
            counter = METRICS[name].kind == "counter"
            assert through_increase == counter, f"{rule['alert']} reads the {METRICS[name].kind} {name} wrongly"


def test_per_task_alerts_keep_the_task_and_the_run_alert_the_dagster_job():
    for rule in alerts():
        specs = [METRICS[name] for name in set(METRIC_NAME.findall(rule["expr"]))]
        if not specs:  # FtpMetricsStale reads the gateway's own push_time_seconds
            continue
        label = "task" if all(spec.per_task for spec in specs) else "dagster_job"
        assert all(spec.per_task == (label == "task") for spec in specs), rule["alert"]
        assert f"$labels.{label}" in rule["annotations"]["summary"], rule["alert"]
        for grouping in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"]):
            assert label in {word.strip() for word in grouping.split(",")}, f"{rule['alert']} drops {label}"


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook():
    for rule in alerts():
        assert re.fullmatch(r"Ftp[A-Z][A-Za-z0-9]*", rule["alert"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, rule["alert"]


def test_every_alert_links_to_its_runbook_heading():
    headings = anchors(OPERATIONS.read_text(encoding="utf-8"))
    assert "alerts-and-their-runbooks" in headings
    for rule in alerts():
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == RUNBOOK_PAGE, f"{rule['alert']}'s runbook is not in {RUNBOOK_PAGE}"
        assert anchor == github_anchor(rule["alert"]), f"{rule['alert']}'s runbook is not the heading of its name"
        assert anchor in headings, f"{RUNBOOK_PAGE} has no heading #{anchor} for {rule['alert']}"


def test_every_condition_to_be_paged_on_has_its_alert():
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)), names
    missing = {condition: name for condition, name in CONDITIONS.items() if name not in names}
    assert not missing, f"conditions without their alert: {missing}"
    assert sorted(names) == sorted(CONDITIONS.values()), "an alert that no condition asks for"


def test_the_observability_page_lists_every_alert_with_its_runbook():
    page = OBSERVABILITY.read_text(encoding="utf-8")
    for name in CONDITIONS.values():
        assert f"| `{name}` |" in page, f"docs/observability.md's table lacks {name}"
        assert f"(operations.md#{github_anchor(name)})" in page, f"docs/observability.md lacks {name}'s runbook link"
