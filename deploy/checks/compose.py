"""compose.yml against the Compose specification's schema, and against the code: environment
variables the binaries read, health checks on the tiers' ports, start order, the GPU profile; the
Prometheus config scrapes every tier's port; the Grafana dashboard asks for metrics that exist;
the traces of the three tiers reach the monitoring profile's Jaeger, which Grafana links to.
"""

from __future__ import annotations

import json
import re

import jsonschema
import yaml

from .common import HTTP_ADDR, ROOT, SCHEMAS, Contract, Report, port_of

SERVICE_TIER = {
    "ingress": "ingress",
    "preprocessor": "preprocessor",
    "gpu-worker": "gpu-worker",
    "gpu-worker-cuda": "gpu-worker",
    "provision": "provision",
}
# The standard OpenTelemetry variables the three tiers read (tierkit/src/telemetry.rs, through the
# SDK), beside their own options; provision exports no traces.
TRACE_ENV = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"}
# Gauges of the NATS exporter (`-jsz=all`) the dashboard may use.
EXPORTER_METRICS = {
    "jetstream_stream_total_messages",
    "jetstream_stream_total_bytes",
    "jetstream_consumer_num_pending",
    "jetstream_consumer_num_ack_pending",
    "jetstream_consumer_num_redelivered",
    "jetstream_consumer_num_waiting",
}


def interpolate(text: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR-default}` / `${VAR}` with nothing set: the defaults."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


def load_compose() -> tuple[dict, dict]:
    text = (ROOT / "compose.yml").read_text()
    return yaml.safe_load(text), yaml.safe_load(interpolate(text))


def check_compose(report: Report, contract: Contract | None) -> None:
    raw, spec = load_compose()
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    report.add(
        "compose.yml validates against compose-spec.json",
        [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(raw)]
        + [f"(defaults) {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(spec)],
    )
    services = spec["services"]
    problems = []
    for name, svc in services.items():
        for dep, cond in depends_on(svc).items():
            if dep not in services:
                problems.append(f"{name} depends on unknown {dep}")
            elif cond["condition"] == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"{name} waits for {dep} to be healthy, which has no health check")
    # The header comment's start order: ingress comes up after both workers.
    order = {"provision": ["nats"], "gpu-worker": ["provision"], "preprocessor": ["provision"],
             "ingress": ["preprocessor", "gpu-worker"]}
    for svc, deps in order.items():
        for dep in deps:
            if depends_on(services[svc]).get(dep, {}).get("condition") not in ("service_healthy", "service_completed_successfully"):
                problems.append(f"{svc} does not wait for {dep} to be ready")
    # The CPU worker runs the CPU-only image, the gpu profile's the CUDA one.
    for name, image in (("gpu-worker", "gpu-worker-cpu"), ("gpu-worker-cuda", "gpu-worker")):
        svc = services.get(name, {})
        if not str(svc.get("image", "")).startswith(f"clothesline/{image}:") or \
                svc.get("build", {}).get("dockerfile") != f"docker/{image}.Dockerfile":
            problems.append(f"{name} does not run clothesline/{image} built from docker/{image}.Dockerfile")
    if services["provision"].get("restart") != "no":
        problems.append("provision is a one-shot service (restart: no)")
    if str(services["preprocessor"].get("deploy", {}).get("replicas")) != "2":
        problems.append("the preprocessor runs 2 replicas")
    cuda = services.get("gpu-worker-cuda", {})
    devices = cuda.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if cuda.get("profiles") != ["gpu"] or not any("gpu" in d.get("capabilities", []) for d in devices):
        problems.append("the CUDA worker is under the gpu profile with a GPU device reservation")
    for name in ("prometheus", "grafana", "nats-exporter", "jaeger"):
        if services.get(name, {}).get("profiles") != ["monitoring"]:
            problems.append(f"{name} is under the monitoring profile")
    for name, svc in services.items():
        if name in SERVICE_TIER and name != "provision":
            if not (svc.get("read_only") and "ALL" in svc.get("cap_drop", [])):
                problems.append(f"{name}: not a read-only container without capabilities")
    # Docker Engine 20.10 (API 1.41) and docker-compose 1.29, what the machines here run, refuse
    # health check options of API 1.44.
    for name, svc in services.items():
        if "start_interval" in svc.get("healthcheck", {}):
            problems.append(f"{name}: healthcheck start_interval needs Docker API 1.44 (Engine 25)")
    if "name" in raw:
        problems.append("top-level `name` is refused by docker-compose 1.29: the project name is in .env")
    report.add("compose.yml: start order, replicas, profiles, locked-down tiers", problems)
    if contract:
        report.add("compose.yml: environment, ports and health checks agree with the code", tier_problems(spec, contract))
    else:
        report.skip("compose.yml against the binaries", "no --contract")
    check_nats_service(report, services["nats"])


def depends_on(service: dict) -> dict:
    deps = service.get("depends_on") or {}
    return {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps


def tier_problems(spec: dict, contract: Contract) -> list[str]:
    problems = []
    for name, tier in SERVICE_TIER.items():
        svc = spec["services"][name]
        env = svc.get("environment", {})
        allowed = contract.env_names(tier) | (TRACE_ENV if tier != "provision" else set())
        problems += [f"{name}: {tier} reads no {v}" for v in sorted(set(env) - allowed)]
        if tier != "provision" and not TRACE_ENV <= set(env):
            problems.append(f"{name}: does not pass the OTEL_* trace variables")
        if env.get("NATS_URL") != "nats://nats:4222":
            problems.append(f"{name}: NATS_URL is not nats://nats:4222")
        if tier == "provision":
            continue
        port = port_of(env.get(HTTP_ADDR[tier]) or contract.default(tier, HTTP_ADDR[tier]))
        test = " ".join(svc.get("healthcheck", {}).get("test", []))
        if f"http://127.0.0.1:{port}/readyz" not in test:
            problems.append(f"{name}: health check is not GET /readyz on {port}")
    ports = spec["services"]["ingress"].get("ports", [])
    if not any(str(p).endswith(f":{port_of(spec['services']['ingress']['environment']['INGRESS_HTTP_ADDR'])}") for p in ports):
        problems.append("ingress: the published port is not INGRESS_HTTP_ADDR's")
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    for tier in ("ingress", "preprocessor", "gpu-worker"):
        port = port_of(contract.default(tier, HTTP_ADDR[tier]))
        sd = jobs.get(tier, {}).get("dns_sd_configs", [{}])[0]
        names = [n for n, t in SERVICE_TIER.items() if t == tier]
        if sd.get("port") != port or sorted(sd.get("names", [])) != sorted(names):
            problems.append(f"prometheus.yml: job {tier} does not scrape {names} on {port}")
    if "nats-exporter:7777" not in json.dumps(jobs.get("nats", {})):
        problems.append("prometheus.yml: job nats does not scrape the exporter")
    return problems


def check_nats_service(report: Report, nats: dict) -> None:
    conf = (ROOT / "nats/nats-server.conf").read_text()
    client = re.search(r"^port:\s*(\d+)", conf, re.M).group(1)
    monitor = re.search(r"^http_port:\s*(\d+)", conf, re.M).group(1)
    problems = []
    published = [str(p).rsplit(":", 1)[1] for p in nats.get("ports", [])]
    if sorted(published) != sorted([client, monitor]):
        problems.append(f"nats publishes {published}, nats-server.conf listens on {client} and {monitor}")
    if f"127.0.0.1:{monitor}/healthz" not in " ".join(nats["healthcheck"]["test"]):
        problems.append("the nats health check is not on the monitoring port")
    if not any("nats-server.conf" in str(v) for v in nats.get("volumes", [])):
        problems.append("nats does not use nats/nats-server.conf")
    report.add("compose.yml: nats uses the repository's server config and ports", problems)


def check_traces(report: Report) -> None:
    """Traces off by default; the endpoint compose.yml's header gives reaches Jaeger's OTLP/HTTP
    receiver; the dashboard links to the trace data source Grafana is given."""
    services = load_compose()[1]["services"]
    problems = []
    for name, tier in SERVICE_TIER.items():
        env = services[name].get("environment", {})
        if tier != "provision" and env.get("OTEL_EXPORTER_OTLP_ENDPOINT") not in ("", None):
            problems.append(f"{name}: exports traces by default (the endpoint must default to empty)")
    jaeger = services.get("jaeger", {})
    command = " ".join(jaeger.get("command", []))
    if "receivers.otlp.protocols.http.endpoint=0.0.0.0:4318" not in command:
        problems.append("jaeger does not receive OTLP/HTTP on 0.0.0.0:4318 (the documented endpoint)")
    if "OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318" not in (ROOT / "compose.yml").read_text():
        problems.append("compose.yml's header does not give OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318")
    if "jaeger" not in depends_on(services.get("grafana", {})):
        problems.append("grafana does not start after jaeger, its trace data source")
    report.add("compose.yml: traces off by default, Jaeger receives them in the monitoring profile", problems)
    dash = json.loads((ROOT / "deploy/grafana/dashboards/clothesline.json").read_text())
    traces = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/jaeger.yml").read_text())
    trace_uids = {d["uid"] for d in traces["datasources"] if d["type"] in ("jaeger", "tempo")}
    links = [link.get("url", "") for link in dash.get("links", [])]
    problems = [] if any(f"%22{uid}%22" in url for url in links for uid in trace_uids) else \
        ["no dashboard link opens the provisioned trace data source"]
    report.add("grafana dashboard: links to the traces (Jaeger data source)", problems)


def code_metrics() -> set[str]:
    names = set()
    for crate in ("ingress", "preprocessor", "gpu-worker"):
        for path in (ROOT / crate / "src").rglob("*.rs"):
            names |= set(re.findall(r'"((?:ingress|preprocessor|gpu_worker)_[a-z_]+)"', path.read_text()))
    return names


def check_grafana(report: Report) -> None:
    dash = json.loads((ROOT / "deploy/grafana/dashboards/clothesline.json").read_text())
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in source["datasources"]}
    known = code_metrics() | EXPORTER_METRICS | {"up"}
    problems = []
    exprs = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
            if target.get("datasource", panel.get("datasource", {})).get("uid") not in uids:
                problems.append(f"panel {panel['title']!r}: datasource is not the provisioned one")
    for expr in exprs:
        for metric in re.findall(r"\b((?:ingress|preprocessor|gpu_worker|jetstream)_[a-z_]+|up)\b\s*[{\[)]", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            if metric not in known and base not in known:
                problems.append(f"{metric} is no metric the code or the NATS exporter exports")
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("request rate", "latency", "queue depth", "batch size", "errors"):
        if topic not in titles:
            problems.append(f"no panel about {topic}")
    report.add(f"grafana dashboard: {len(exprs)} queries on metrics that exist, every topic covered", problems)
