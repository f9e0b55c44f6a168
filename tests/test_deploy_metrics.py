"""deploy/prometheus rules pass promtool, and the rules and the Grafana dashboard name only metrics taskmon serves."""
import json
import re
import subprocess

from monitor.metrics import render
from tasks.settings import Settings
from tests.services import REPO, need_program

RULES = REPO / "deploy" / "prometheus" / "taskmon-rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "taskmon.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def served_names(engine, redis_url) -> set[str]:
    text, content_type = render(engine, Settings(broker_url=redis_url, database_url=str(engine.url)))
    assert content_type.startswith("text/plain")
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text.decode(), re.M):
        if kind == "counter":  # an empty counter family is typed under its _total name
            name = name.removesuffix("_total")
        names |= {name + s for s in SUFFIXES[kind]}
    return names


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\b((?:celery|taskmon)_[a-z_]+)\b", text))


def test_promtool_accepts_the_rules():
    promtool = need_program("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 8 rules found" in check.stdout


def test_rules_and_dashboard_use_only_served_metrics(engine, redis_url):
    served = served_names(engine, redis_url)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for source, text in (("rules", RULES.read_text()), ("dashboard", exprs)):
        names = referenced(text)
        assert names, source
        assert names - served == set(), source
    # Every one of taskmon's own metrics has a panel.
    assert {n for n in served if n.startswith("taskmon_") and not n.endswith("_created")} <= referenced(exprs)
