"""What every workload must have, read off the rendered manifests: requests and limits, probes on
the health endpoints, a PodDisruptionBudget, a termination grace period longer than the drain, a
restricted security context, a scrape target, an owner for its replica count, and a stage label
for the two-step apply.
"""

from __future__ import annotations

from .common import Report, container_env

WORKLOADS = ("Deployment", "StatefulSet", "Job")
ALLOWED_VOLUMES = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected", "downwardAPI"}
STAGES = {"platform", "app"}
# Applied first: the namespace, NATS, the provisioning Job and what they need.
PLATFORM_KINDS = {"Namespace", "NetworkPolicy", "StorageClass"}
PLATFORM_NAMES = {"nats", "provision"}


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels and matchExpressions) against a set of labels."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_labels(obj: dict) -> dict:
    return obj["spec"]["template"]["metadata"].get("labels", {})


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def container_problems(where: str, c: dict, probes: bool) -> list[str]:
    out = []
    res = c.get("resources", {})
    for part in ("requests", "limits"):
        missing = {"cpu", "memory"} - set(res.get(part, {}))
        if missing:
            out.append(f"{where}: no {part} for {', '.join(sorted(missing))}")
    sc = c.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{where}: allowPrivilegeEscalation is not false")
    if sc.get("readOnlyRootFilesystem") is not True:
        out.append(f"{where}: root filesystem is not read-only")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        out.append(f"{where}: capabilities are not all dropped")
    if sc.get("runAsUser") == 0 or sc.get("privileged"):
        out.append(f"{where}: runs as root or privileged")
    image = c.get("image", "")
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        out.append(f"{where}: image {image!r} has no fixed tag")
    if probes:
        for probe in ("livenessProbe", "readinessProbe"):
            if probe not in c:
                out.append(f"{where}: no {probe}")
    return out


def pod_problems(obj: dict) -> list[str]:
    spec = obj["spec"]["template"]["spec"]
    where = name_of(obj)
    out = []
    sc = spec.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True or not sc.get("runAsUser"):
        out.append(f"{where}: pod does not run as a non-root user (runAsNonRoot, runAsUser)")
    if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        out.append(f"{where}: no RuntimeDefault seccomp profile")
    if spec.get("automountServiceAccountToken") is not False or not spec.get("serviceAccountName"):
        out.append(f"{where}: needs its own service account and no mounted API token")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"{where}: volume {volume['name']} of a kind the restricted policy refuses")
    probes = obj["kind"] != "Job"
    for c in spec.get("initContainers", []) + spec["containers"]:
        out += container_problems(f"{where} container {c['name']}", c, probes)
    return out


def grace_problems(obj: dict) -> list[str]:
    """terminationGracePeriodSeconds > preStop sleep + the drain the binary waits for."""
    spec = obj["spec"]["template"]["spec"]
    grace = spec.get("terminationGracePeriodSeconds", 30)
    out = []
    for c in spec["containers"]:
        env = container_env(c)
        drain_ms = 0
        for var in ("PREPROCESSOR_SHUTDOWN_GRACE_MS", "GPU_WORKER_SHUTDOWN_GRACE_MS", "INGRESS_MAX_TIMEOUT_MS"):
            if var in env:
                drain_ms = max(drain_ms, int(env[var] or 0))
        if c["name"] in ("preprocessor", "gpu-worker", "ingress") and not drain_ms:
            out.append(f"{name_of(obj)}: {c['name']} does not set its drain time explicitly")
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        if grace <= pre_stop + drain_ms / 1000:
            out.append(
                f"{name_of(obj)}: grace period {grace} s is not longer than preStop {pre_stop} s + drain {drain_ms / 1000} s"
            )
    return out


def check_workloads(report: Report, overlay: str, objects: list[dict]) -> None:
    workloads = [o for o in objects if o["kind"] in WORKLOADS]
    report.add(
        f"{overlay}: resources, probes, non-root read-only security context on every workload",
        [p for o in workloads for p in pod_problems(o)],
    )

    pdbs = by_kind(objects, "PodDisruptionBudget")
    report.add(
        f"{overlay}: a PodDisruptionBudget for every Deployment and StatefulSet",
        [
            f"{name_of(o)} has none"
            for o in workloads
            if o["kind"] != "Job" and not any(selects(p["spec"]["selector"], pod_labels(o)) for p in pdbs)
        ],
    )
    report.add(
        f"{overlay}: termination grace longer than the drain",
        [p for o in by_kind(objects, "Deployment") for p in grace_problems(o)],
    )

    monitors = by_kind(objects, "PodMonitor") + by_kind(objects, "ServiceMonitor")
    problems = []
    for o in workloads:
        if o["kind"] == "Job":
            continue
        notes = o["spec"]["template"]["metadata"].get("annotations", {})
        ports = {p["containerPort"] for c in o["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        if notes.get("prometheus.io/scrape") != "true" or int(notes.get("prometheus.io/port", 0)) not in ports:
            problems.append(f"{name_of(o)}: no prometheus.io scrape annotations on one of its ports")
        if overlay == "eks" and not any(monitor_selects(m, o, objects) for m in monitors):
            problems.append(f"{name_of(o)}: no PodMonitor or ServiceMonitor selects it")
    report.add(f"{overlay}: every workload is scraped", problems)

    report.add(f"{overlay}: replica counts have one owner", owner_problems(objects))
    report.add(f"{overlay}: services select pods and name their ports", service_problems(objects))
    report.add(f"{overlay}: stage labels split the apply in two", stage_problems(objects))


def monitor_selects(monitor: dict, workload: dict, objects: list[dict]) -> bool:
    if monitor["kind"] == "PodMonitor":
        return selects(monitor["spec"]["selector"], pod_labels(workload))
    services = [
        s
        for s in by_kind(objects, "Service")
        if selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        and selects({"matchLabels": s["spec"].get("selector", {})}, pod_labels(workload))
    ]
    return bool(services)


def owner_problems(objects: list[dict]) -> list[str]:
    out = []
    scaled = {}
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        scaled.setdefault(hpa["spec"]["scaleTargetRef"]["name"], []).append(name_of(hpa))
    for so in by_kind(objects, "ScaledObject"):
        scaled.setdefault(so["spec"]["scaleTargetRef"]["name"], []).append(name_of(so))
    deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
    for target, owners in scaled.items():
        if target not in deployments:
            out.append(f"{', '.join(owners)} scale a Deployment that does not exist: {target}")
        elif len(owners) > 1:
            out.append(f"Deployment/{target} is scaled by more than one: {owners}")
    for name, d in deployments.items():
        if name not in scaled:
            out.append(f"Deployment/{name} has no autoscaler")
        elif "replicas" in d["spec"]:
            out.append(f"Deployment/{name} sets replicas, which its autoscaler owns")
    if "ingress" in scaled and not scaled["ingress"][0].startswith("HorizontalPodAutoscaler"):
        out.append("the ingress is not scaled by a HorizontalPodAutoscaler")
    return out


def service_problems(objects: list[dict]) -> list[str]:
    out = []
    pods = [o for o in objects if o["kind"] in WORKLOADS]
    for svc in by_kind(objects, "Service"):
        chosen = [o for o in pods if selects({"matchLabels": svc["spec"].get("selector", {})}, pod_labels(o))]
        if not chosen:
            out.append(f"{name_of(svc)} selects no pod")
            continue
        names = {
            p.get("name")
            for o in chosen
            for c in o["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            if isinstance(port.get("targetPort"), str) and port["targetPort"] not in names:
                out.append(f"{name_of(svc)}: targetPort {port['targetPort']} is no container port")
    return out


def stage_problems(objects: list[dict]) -> list[str]:
    out = []
    for o in objects:
        labels = o["metadata"].get("labels", {})
        stage = labels.get("clothesline.io/stage")
        platform = o["kind"] in PLATFORM_KINDS or labels.get("app.kubernetes.io/name") in PLATFORM_NAMES
        if stage not in STAGES:
            out.append(f"{name_of(o)}: clothesline.io/stage is {stage!r}")
        elif platform != (stage == "platform"):
            out.append(f"{name_of(o)}: belongs to the {'platform' if platform else 'app'} stage, labelled {stage}")
    return out
