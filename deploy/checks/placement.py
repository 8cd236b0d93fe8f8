"""Where things run, against the cluster they run on: the gpu-worker lands on the eksctl GPU node
group (its labels, its taint, a GPU limit) and nothing else does; NATS has one server per node,
as many servers as the streams have replicas, on a storage class that exists; the ingress and the
preprocessor spread over nodes and zones; a load balancer is never open to the whole internet.
"""

from __future__ import annotations

from .common import Report, container_env
from .render import node_pool_labels
from .workloads import WORKLOADS, by_kind, name_of, pod_labels, selects

SPREAD = ("ingress", "preprocessor")
SPREAD_KEYS = {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
OPEN = {"0.0.0.0/0", "::/0"}


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    for t in tolerations:
        if t.get("key") != taint["key"] or t.get("effect", taint["effect"]) != taint["effect"]:
            continue
        if t.get("operator", "Equal") == "Exists" or t.get("value") == taint.get("value"):
            return True
    return False


def nats_problems(objects: list[dict], servers_wanted: int) -> list[str]:
    out = []
    (sts,) = [s for s in by_kind(objects, "StatefulSet") if s["metadata"]["name"] == "nats"]
    replicas = sts["spec"]["replicas"]
    if replicas != servers_wanted:
        out.append(f"NATS has {replicas} servers, expected {servers_wanted}")
    (job,) = [j for j in by_kind(objects, "Job") if j["metadata"]["name"] == "provision"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    if container_env(container).get("JETSTREAM_REPLICAS") != str(replicas):
        out.append(f"streams are provisioned with {container_env(container).get('JETSTREAM_REPLICAS')} replicas on {replicas} servers")
    if replicas > 1:
        anti = sts["spec"]["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {})
        required = anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
        if not any(r.get("topologyKey") == "kubernetes.io/hostname" for r in required):
            out.append("NATS servers may share a node (no required anti-affinity on the hostname)")
    classes = {c["metadata"]["name"] for c in by_kind(objects, "StorageClass")}
    for claim in sts["spec"]["volumeClaimTemplates"]:
        wanted = claim["spec"].get("storageClassName")
        if wanted is not None and wanted not in classes:
            out.append(f"volume {claim['metadata']['name']} asks for storage class {wanted}, which is not defined")
    return out


def check_placement(report: Report, overlay: str, objects: list[dict]) -> None:
    if overlay != "eks":
        report.add(f"{overlay}: one NATS server, streams with one replica", nats_problems(objects, 1))
        return
    pools = node_pool_labels()
    gpu, cpu = pools["gpu"], pools["cpu"]
    problems = nats_problems(objects, 3)
    if cpu["minSize"] < 3:
        problems.append("fewer CPU nodes than NATS servers")
    for o in objects:
        if o["kind"] not in WORKLOADS:
            continue
        spec = o["spec"]["template"]["spec"]
        selector = spec.get("nodeSelector", {})
        on_gpu = any(tolerates(spec.get("tolerations", []), t) for t in gpu.get("taints", []))
        if o["metadata"]["name"] == "gpu-worker":
            (c,) = spec["containers"]
            if not on_gpu or not selector or any(gpu["labels"].get(k) != v for k, v in selector.items()):
                problems.append(f"{name_of(o)} is not placed on the gpu node group (labels and taint)")
            if int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) < 1:
                problems.append(f"{name_of(o)} has no nvidia.com/gpu limit")
            if container_env(c).get("DEVICE") != "cuda":
                problems.append(f"{name_of(o)} does not run on CUDA")
        else:
            if on_gpu:
                problems.append(f"{name_of(o)} tolerates the GPU taint")
            if any(cpu["labels"].get(k) != v for k, v in selector.items()):
                problems.append(f"{name_of(o)} selects nodes the cpu node group does not have")
    report.add("eks: GPU work on the GPU node group, NATS spread and replicated", problems)


def spread_problems(objects: list[dict]) -> list[str]:
    out = []
    for d in by_kind(objects, "Deployment"):
        if d["metadata"]["name"] not in SPREAD:
            continue
        constraints = d["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
        keys = {c["topologyKey"] for c in constraints if selects(c.get("labelSelector", {}), pod_labels(d))}
        if not SPREAD_KEYS <= keys:
            out.append(f"{name_of(d)}: no topologySpreadConstraints of its own pods over {', '.join(sorted(SPREAD_KEYS - keys))}")
    return out


def load_balancer_problems(objects: list[dict]) -> list[str]:
    """A LoadBalancer Service carries its source ranges from the first apply (no open window)."""
    out = []
    for svc in by_kind(objects, "Service"):
        if svc["spec"].get("type") != "LoadBalancer":
            continue
        ranges = svc["spec"].get("loadBalancerSourceRanges", [])
        if not ranges or OPEN & set(ranges):
            out.append(f"{name_of(svc)}: a load balancer open to the internet (loadBalancerSourceRanges {ranges})")
    return out


def check_exposure(report: Report, overlay: str, objects: list[dict]) -> None:
    report.add(f"{overlay}: ingress and preprocessor spread over nodes and zones", spread_problems(objects))
    report.add(f"{overlay}: load balancers have source ranges from the start", load_balancer_problems(objects))
