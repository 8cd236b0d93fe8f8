"""The dashboard and the alerts, beyond their schemas: the lag as KEDA reads it (from the consumer
leader, never `max` over servers whose followers report stale counts), every query scoped by the
namespace variable, panels for the NATS servers and KEDA; the PrometheusRule has the alerts that
matter, each on metrics that exist (the tiers', the NATS exporter's, kube-state-metrics'), with a
`for`. With `promtool` on PATH (Debian's `prometheus` package has it) also `promtool check rules`
and the alerts' unit tests, deploy/prometheus/alerts.test.yaml.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
import shutil

import yaml

from .common import ROOT, Report, run
from .compose import code_metrics
from .workloads import by_kind

ALERTS = {
    "ClotheslineQueueGrowingWithoutConsumer",
    "ClotheslineErrorRatioHigh",
    "ClotheslineDeadlineExpiries",
    "ClotheslineGpuTierAtZeroWithLag",
    "ClotheslineNatsNotReady",
}
# prometheus-nats-exporter 0.17 (-varz -jsz=all): the series the alerts and panels may use.
EXPORTER = {
    "jetstream_stream_total_messages",
    "jetstream_stream_total_bytes",
    "jetstream_stream_consumer_count",
    "jetstream_consumer_num_pending",
    "jetstream_consumer_num_ack_pending",
    "jetstream_consumer_num_redelivered",
    "jetstream_consumer_num_waiting",
    "jetstream_consumer_delivered_stream_seq",
    "jetstream_consumer_ack_floor_stream_seq",
    "gnatsd_varz_connections",
    "gnatsd_varz_slow_consumers",
    "gnatsd_varz_mem",
    "gnatsd_varz_cpu",
}
KUBE_STATE = {
    "kube_deployment_status_replicas_available",
    "kube_statefulset_status_replicas_ready",
    "kube_statefulset_replicas",
}
KEDA = {"keda_scaler_metrics_value", "keda_scaler_active", "keda_scaler_detail_errors_total"}
METRIC = re.compile(r"\b((?:ingress|preprocessor|gpu_worker|jetstream|gnatsd|kube|keda)_[a-z_]+)\s*[{\[)]")


def unknown_metrics(expr: str) -> list[str]:
    known = code_metrics() | EXPORTER | KUBE_STATE | KEDA
    return [m for m in METRIC.findall(expr) if m not in known and re.sub(r"_(bucket|sum|count)$", "", m) not in known]


def dashboard_problems() -> list[str]:
    dash = json.loads((ROOT / "deploy/grafana/dashboards/clothesline.json").read_text())
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    out = [f"the dashboard has no ${v} variable" for v in ("namespace", "instance") if v not in variables]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for expr in exprs:
        out += [f"{m} is no metric anything here exports: {expr}" for m in unknown_metrics(expr)]
        for selector in re.findall(r"\b(?:ingress|preprocessor|gpu_worker|jetstream|gnatsd)_[a-z_]+(\{[^}]*\})?", expr):
            if '$namespace"' not in selector:
                out.append(f"not scoped by $namespace: {expr}")
                break
        if re.search(r"jetstream_consumer_\w+\{", expr) and 'is_consumer_leader="true"' not in expr:
            out.append(f"consumer figures not from the consumer leader (is_consumer_leader): {expr}")
    for prefix, what in (("gnatsd_", "NATS server"), ("keda_", "KEDA")):
        if not any(prefix in e for e in exprs):
            out.append(f"no {what} panel")
    return out


def rule_problems(objects: list[dict]) -> list[str]:
    rules = [r for pr in by_kind(objects, "PrometheusRule") for g in pr["spec"]["groups"] for r in g["rules"]]
    names = {r.get("alert") for r in rules}
    out = [f"no alert {a}" for a in sorted(ALERTS - names)]
    for rule in rules:
        out += [f"{rule.get('alert')}: {m} is no metric anything here exports" for m in unknown_metrics(rule["expr"])]
        if rule.get("alert") and not rule.get("for"):
            out.append(f"{rule['alert']}: no `for`: one bad scrape would page")
        if rule["expr"].count("(") != rule["expr"].count(")"):
            out.append(f"{rule.get('alert')}: unbalanced parentheses")
    return out + promtool_problems(objects)


def promtool_problems(objects: list[dict]) -> list[str]:
    """`promtool check rules` on the PrometheusRule's groups, and `promtool test rules` with the
    unit tests of deploy/prometheus/alerts.test.yaml (each alert fires, near misses stay quiet)."""
    promtool = shutil.which("promtool")
    if not promtool:
        return []
    groups = [g for pr in by_kind(objects, "PrometheusRule") for g in pr["spec"]["groups"]]
    tests = yaml.safe_load((ROOT / "deploy/prometheus/alerts.test.yaml").read_text())
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": groups}))
        unit = Path(tmp) / "alerts.test.yaml"
        unit.write_text(yaml.safe_dump({**tests, "rule_files": [str(rules)]}))
        for command in ([promtool, "check", "rules", str(rules)], [promtool, "test", "rules", str(unit)]):
            done = run(command)
            if done.returncode != 0:
                out.append(f"promtool {command[1]} rules: {done.stdout}{done.stderr}".strip())
    return out


def check_monitoring(report: Report, rendered: dict[str, list[dict]]) -> None:
    report.add("grafana dashboard: lag from the consumer leader, $namespace/$instance, NATS and KEDA panels", dashboard_problems())
    tool = ", promtool check and unit tests" if shutil.which("promtool") else ""
    report.add(f"eks: PrometheusRule alerts on metrics that exist (structure{tool})", rule_problems(rendered.get("eks", [])))
