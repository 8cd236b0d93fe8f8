"""Names that must agree between the code and the Kubernetes manifests: the stream, consumer and
account in each ScaledObject against what the code provisions; the NATS monitoring endpoint
KEDA polls; lag thresholds against each tier's in-flight window; environment variables against
those the binaries read; ports and probe paths against the addresses and routes in the code.
"""

from __future__ import annotations

import re

from .common import HTTP_ADDR, NAMESPACE, ROOT, TIERS, Contract, Report, container_env, port_of
from .workloads import by_kind, name_of

HEALTH = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
ROUTES_IN = {"ingress": "ingress/src", "preprocessor": "tierkit/src", "gpu-worker": "tierkit/src"}


def routes(tier: str) -> set[str]:
    """The HTTP routes a tier's code serves (`.route("/path", ...)`)."""
    text = "".join(p.read_text() for p in (ROOT / ROUTES_IN[tier]).rglob("*.rs"))
    return set(re.findall(r'\.route\(\s*"(/[a-z]+)"', text))


def nats_conf_value(text: str, key: str) -> str | None:
    m = re.search(rf"^\s*{key}\s*[:=]\s*(\S+)", text, re.M)
    return m.group(1) if m else None


def nats_conf(objects: list[dict]) -> str:
    (cm,) = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("nats-config")]
    return cm["data"]["nats.conf"]


def tier_container(objects: list[dict], tier: str) -> tuple[dict, dict]:
    (d,) = [o for o in by_kind(objects, "Deployment") if o["metadata"]["name"] == tier]
    (c,) = [c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == tier]
    return d, c


def env_value(contract: Contract | None, tier: str, container: dict, var: str) -> str | None:
    """A variable as the container sets it, else the binary's default (when the contract is known)."""
    return container_env(container).get(var) or (contract.default(tier, var) if contract else None)


def check_scaled_objects(report: Report, overlay: str, objects: list[dict], contract: Contract) -> None:
    problems = []
    conf = nats_conf(objects)
    if re.search(r"^\s*accounts\s*[:{=]", conf, re.M):
        problems.append("nats.conf declares accounts: the ScaledObjects name the default account $G")
    monitor = port_of(nats_conf_value(conf, "http") or ":0")
    (sts,) = [s for s in by_kind(objects, "StatefulSet") if s["metadata"]["name"] == "nats"]
    headless = sts["spec"]["serviceName"]
    svc = [s for s in by_kind(objects, "Service") if s["metadata"]["name"] == headless]
    if not svc or monitor not in {p["port"] for p in svc[0]["spec"]["ports"]}:
        problems.append(f"Service {headless} does not expose the monitoring port {monitor}")
    if not svc or svc[0]["spec"].get("clusterIP") != "None":
        problems.append(f"Service {headless} is not headless: KEDA needs <server>.{headless} names")
    endpoint = f"{headless}.{NAMESPACE}.svc.cluster.local:{monitor}"
    if nats_conf_value(conf, "server_name") != "$POD_NAME":
        problems.append("server_name is not the pod name: KEDA matches consumer leaders by it")
    if sts["spec"]["replicas"] > 1:
        if not re.search(r"no_advertise\s*:\s*true", conf):
            problems.append("a NATS cluster without no_advertise: KEDA would look for leaders at pod IPs")
        for route in re.findall(r"nats://([^:\s]+):\d+", conf):
            if not re.fullmatch(rf"nats-\d+\.{headless}", route):
                problems.append(f"route {route} is not <pod>.{headless}")

    scaled = by_kind(objects, "ScaledObject")
    for want in contract.consumers:
        tier = want["tier"]
        mine = [s for s in scaled if s["spec"]["scaleTargetRef"]["name"] == tier]
        if len(mine) != 1:
            problems.append(f"{len(mine)} ScaledObjects target Deployment/{tier}, expected one")
            continue
        so = mine[0]
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        expect = {
            "natsServerMonitoringEndpoint": endpoint,
            "account": "$G",
            "stream": want["stream"],
            "consumer": want["consumer"],
        }
        if trigger["type"] != "nats-jetstream":
            problems.append(f"{name_of(so)}: trigger type {trigger['type']}")
        for key, value in expect.items():
            if meta.get(key) != value:
                problems.append(f"{name_of(so)}: {key} is {meta.get(key)!r}, the code says {value!r}")
        if meta.get("useHttps", "false") != "false":
            problems.append(f"{name_of(so)}: NATS monitoring is plain HTTP")
        _, container = tier_container(objects, tier)
        window = in_flight_window(contract, tier, container)
        if window is None:
            problems.append(f"{name_of(so)}: the Deployment does not fix the in-flight window explicitly")
        elif meta.get("lagThreshold") != str(window):
            problems.append(f"{name_of(so)}: lagThreshold {meta.get('lagThreshold')} is not the in-flight window {window}")
        if meta.get("activationLagThreshold") != "0":
            problems.append(f"{name_of(so)}: activationLagThreshold must be 0 (any waiting message wakes a worker)")
    by_target = {s["spec"]["scaleTargetRef"]["name"]: s for s in scaled}
    if overlay != "kind" and by_target.get("gpu-worker", {}).get("spec", {}).get("minReplicaCount") != 0:
        problems.append("the gpu-worker does not scale to zero")
    report.add(f"{overlay}: ScaledObjects name the provisioned streams, consumers and account", problems)


def in_flight_window(contract: Contract | None, tier: str, container: dict) -> int | None:
    """Messages one replica holds (pending acks): what lagThreshold is measured against."""
    env = container_env(container)
    if tier == "preprocessor":
        value = env_value(contract, tier, container, "PREPROCESSOR_CONCURRENCY")
        return int(value) if value else None
    if tier == "gpu-worker" and env.get("GPU_WORKER_MAX_BATCH"):
        return 2 * int(env["GPU_WORKER_MAX_BATCH"])
    return None


def check_tiers(report: Report, overlay: str, objects: list[dict], contract: Contract) -> None:
    env_problems, port_problems = [], []
    for o in objects:
        if o["kind"] not in ("Deployment", "Job"):
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            tier = c["name"]
            if tier not in contract.options:
                env_problems.append(f"{name_of(o)}: container {tier} is no clothesline binary")
                continue
            unknown = set(container_env(c)) - contract.env_names(tier)
            env_problems += [f"{name_of(o)}: {tier} reads no {v}" for v in sorted(unknown)]
            url = container_env(c).get("NATS_URL") or ""
            m = re.fullmatch(r"nats://([a-z0-9-]+):(\d+)", url)
            if not m or not service_port(objects, m.group(1), int(m.group(2)), "nats"):
                port_problems.append(f"{name_of(o)}: NATS_URL {url!r} is not the nats Service's client port")
    for tier in TIERS:
        deployment, c = tier_container(objects, tier)
        where = name_of(deployment)
        port = port_of(env_value(contract, tier, c, HTTP_ADDR[tier]) or ":0")
        named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if named.get("http") != port:
            port_problems.append(f"{where}: container port http {named.get('http')} != {HTTP_ADDR[tier]} port {port}")
        served = routes(tier)
        for probe, path in HEALTH.items():
            get = c.get(probe, {}).get("httpGet", {})
            probe_port = named.get(get.get("port"), get.get("port"))
            if get.get("path") != path or probe_port != port:
                port_problems.append(f"{where}: {probe} is not GET {path} on {port}")
            if path not in served:
                port_problems.append(f"{where}: the code of {tier} serves no {path}")
        notes = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if notes.get("prometheus.io/port") != str(port) or notes.get("prometheus.io/path", "/metrics") not in served:
            port_problems.append(f"{where}: scrape annotations do not point at /metrics on {port}")
    report.add(f"{overlay}: every environment variable set is one the binary reads", env_problems)
    report.add(f"{overlay}: ports, probe paths and NATS_URL agree with the code", port_problems)


def service_port(objects: list[dict], name: str, port: int, app: str) -> bool:
    for s in by_kind(objects, "Service"):
        if s["metadata"]["name"] == name and s["spec"].get("selector", {}).get("app.kubernetes.io/name") == app:
            return any(p["port"] == port for p in s["spec"]["ports"])
    return False


# Images each overlay runs in a container, when not the container's own name: kind runs the
# gpu-worker from its CPU-only image (no CUDA libraries to load onto a laptop).
KIND_IMAGES = {"gpu-worker": "clothesline/gpu-worker-cpu"}
IMMUTABLE_TAG = re.compile(r"[0-9a-f]{7,40}")  # a git sha, as scripts/push-ecr.sh pushes


def check_images(report: Report, overlay: str, objects: list[dict]) -> None:
    """eks: ECR images under an immutable tag (a git sha or a digest), pulled when not present;
    kind: the locally built images (the CPU-only gpu-worker), loaded and never pulled."""
    problems = []
    for o in objects:
        if o["kind"] not in ("Deployment", "Job"):
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            image = c["image"]
            repo, _, digest = image.partition("@")
            repo, _, tag = repo.rpartition(":") if ":" in repo.rsplit("/", 1)[-1] else (repo, "", "")
            if overlay == "eks":
                if not re.fullmatch(rf"\d{{12}}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/clothesline/{c['name']}", repo):
                    problems.append(f"{name_of(o)}: {image} is not an ECR image of clothesline/{c['name']}")
                if not digest and not IMMUTABLE_TAG.fullmatch(tag):
                    problems.append(
                        f"{name_of(o)}: {image} has a mutable tag {tag!r}: use the git sha scripts/push-ecr.sh pushes"
                    )
                if c.get("imagePullPolicy") != "IfNotPresent":
                    problems.append(f"{name_of(o)}: imagePullPolicy {c.get('imagePullPolicy')!r}: an immutable tag needs IfNotPresent")
            else:
                want = KIND_IMAGES.get(c["name"], f"clothesline/{c['name']}")
                if repo != want or c.get("imagePullPolicy") != "IfNotPresent":
                    problems.append(f"{name_of(o)}: {image} is not the locally built {want}, or would be pulled")
    what = "ECR, immutable git-sha tags" if overlay == "eks" else "kind load, the CPU-only gpu-worker"
    report.add(f"{overlay}: images are the tiers' own ({what})", problems)
