"""Kubernetes manifests: every overlay renders with `kubectl kustomize`, and every rendered object
validates against a strict schema (core kinds with kubernetes-validate; KEDA and Prometheus
Operator kinds, and eksctl's ClusterConfig, with the schemas in ../shared/schemas).
"""

from __future__ import annotations

import copy
import json
from functools import cache

import jsonschema
import kubernetes_validate
import yaml

from .common import K8S_VERSION, OVERLAYS, ROOT, SCHEMAS, Report, load_yaml_all, rel, run, tool

# Custom resources and the schema each validates against.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh/scaledobject_v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh/triggerauthentication_v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com/servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com/podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com/prometheusrule_v1.json",
}


def render(overlay: str) -> list[dict]:
    """The objects `kubectl kustomize` renders for an overlay (raises with kubectl's error)."""
    out = run([tool("kubectl"), "kustomize", str(OVERLAYS[overlay])])
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def strict(schema: object) -> object:
    """A copy of a JSON schema that refuses unknown properties wherever it lists the known ones
    (CRD schemas leave that open), except where Kubernetes keeps unknown fields on purpose; with
    patterns Python's re reads as Go's regexp does."""
    schema = copy.deepcopy(schema)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            # Go's regexp takes inline flags anywhere, Python's only at the start (the Prometheus
            # Operator's PrometheusRule has `^(?i)(abort|warn)?$`).
            if isinstance(node.get("pattern"), str) and node["pattern"].startswith("^(?i)"):
                node["pattern"] = "(?i)^" + node["pattern"][len("^(?i)") :]
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@cache
def crd_validator(path: str) -> jsonschema.protocols.Validator:
    schema = strict(json.loads((SCHEMAS / path).read_text()))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(obj: dict) -> list[str]:
    """Problems of one rendered object against its strict schema."""
    what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        errors = [
            f"{what}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validator(CRD_SCHEMAS[key]).iter_errors(obj)
        ]
        # CRD schemas only say `metadata: object`: check it as the ObjectMeta it is.
        meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
        return errors + [f"{what}: metadata: {e}" for e in core_errors(meta)]
    return [f"{what}: {e}" for e in core_errors(obj)]


def core_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"no schema (unknown kind or API version): {e.message}"]
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"]
    return []


def check_manifests(report: Report) -> dict[str, list[dict]]:
    """Renders every overlay and validates what comes out; returns the rendered objects."""
    rendered: dict[str, list[dict]] = {}
    for overlay, path in OVERLAYS.items():
        try:
            rendered[overlay] = render(overlay)
        except RuntimeError as e:
            report.add(f"kubectl kustomize {rel(path)}", [str(e)])
            continue
        report.add(f"kubectl kustomize {rel(path)} ({len(rendered[overlay])} objects)", [])
        problems = [p for obj in rendered[overlay] for p in schema_errors(obj)]
        report.add(f"{overlay}: every object validates (Kubernetes {K8S_VERSION}, strict)", problems)
    return rendered


def check_cluster_configs(report: Report) -> None:
    """eksctl's ClusterConfig against its schema; kind's cluster config maps the NodePort."""
    path = ROOT / "k8s/overlays/eks/eksctl-cluster.yaml"
    (config,) = load_yaml_all(path)
    validator = crd_validator("eksctl.io/clusterconfig_v1alpha5.json")
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]
    if config.get("metadata", {}).get("version") != K8S_VERSION:
        problems.append(f"metadata.version is not {K8S_VERSION}, the version manifests are validated against")
    pools = {g["name"]: g for g in config.get("managedNodeGroups", [])}
    gpu = pools.get("gpu", {})
    if not any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule" for t in gpu.get("taints", [])):
        problems.append("the gpu node group has no nvidia.com/gpu:NoSchedule taint")
    if gpu.get("minSize") != 0 or not gpu.get("propagateASGTags"):
        problems.append("the gpu node group must scale from 0 (minSize 0, propagateASGTags)")
    if pools.get("cpu", {}).get("minSize", 0) < 3:
        problems.append("the cpu node group needs 3 nodes for the 3 NATS servers (anti-affinity)")
    report.add(f"{rel(path)} validates (eksctl.io/v1alpha5, strict)", problems)


def node_pool_labels() -> dict[str, dict]:
    (config,) = load_yaml_all(ROOT / "k8s/overlays/eks/eksctl-cluster.yaml")
    return {g["name"]: g for g in config["managedNodeGroups"]}


def kind_host_ports() -> dict[int, int]:
    """kind-cluster.yaml: container (node) port -> host port."""
    (config,) = load_yaml_all(ROOT / "k8s/overlays/kind/kind-cluster.yaml")
    return {
        m["containerPort"]: m["hostPort"]
        for node in config["nodes"]
        for m in node.get("extraPortMappings", [])
    }


def scaled_object_triggers(rendered: dict[str, list[dict]]) -> list[dict]:
    """Every nats-jetstream trigger of every ScaledObject, per overlay (for tests/tests/deploy.rs)."""
    out = []
    for overlay, objects in rendered.items():
        for obj in objects:
            if obj["kind"] != "ScaledObject":
                continue
            for trigger in obj["spec"]["triggers"]:
                out.append(
                    {
                        "overlay": overlay,
                        "name": obj["metadata"]["name"],
                        "target": obj["spec"]["scaleTargetRef"]["name"],
                        "type": trigger["type"],
                        "min_replicas": obj["spec"].get("minReplicaCount", 0),
                        "max_replicas": obj["spec"].get("maxReplicaCount", 100),
                        **trigger["metadata"],
                    }
                )
    return out
