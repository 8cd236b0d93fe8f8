"""Capacities, each decided in one place and checked wherever it is used: a ScaledObject's
maxReplicaCount is no more than its consumer can feed (`max_ack_pending` of
nats/jetstream/<consumer>.consumer.json over the messages one replica holds) nor, for GPU work, than
its node group holds (eksctl-cluster.yaml's maxSize x GPUs per node over GPUs per replica). And
scaling that fails safe: every ScaledObject has a fallback, a tier that scales to zero falls back
to at least one replica; a GPU Deployment rolls out without a surge pod (no free GPU on a full node
group) and its PodDisruptionBudget allows what the rollout takes.
"""

from __future__ import annotations

import json

from .common import ROOT, Contract, Report
from .contract import in_flight_window, tier_container
from .render import node_pool_labels
from .workloads import by_kind, name_of, pod_labels, selects

# The Cluster Autoscaler's tag that tells how many GPUs a node of a group (scaled from 0) brings.
GPU_TAG = "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"


def consumer_configs() -> dict[str, dict]:
    """durable name -> consumer config, as clothesline-provision creates it (the same files)."""
    out = {}
    for path in sorted((ROOT / "nats/jetstream").glob("*.consumer.json")):
        config = json.loads(path.read_text())
        out[config["durable_name"]] = config
    return out


def gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def consumer_problems(objects: list[dict], contract: Contract | None) -> list[str]:
    consumers = consumer_configs()
    out = []
    for so in by_kind(objects, "ScaledObject"):
        tier = so["spec"]["scaleTargetRef"]["name"]
        for trigger in so["spec"]["triggers"]:
            name = trigger["metadata"].get("consumer")
            if trigger["type"] != "nats-jetstream" or name not in consumers:
                out.append(f"{name_of(so)}: consumer {name!r} is not one of nats/jetstream/*.consumer.json")
                continue
            window = in_flight_window(contract, tier, tier_container(objects, tier)[1])
            if not window:
                out.append(f"{name_of(so)}: the in-flight window of {tier} is not known")
                continue
            ack_pending = consumers[name]["max_ack_pending"]
            usable = ack_pending // window
            wanted = so["spec"].get("maxReplicaCount", 100)
            if wanted > usable:
                out.append(
                    f"{name_of(so)}: maxReplicaCount {wanted} exceeds what consumer {name} can feed: "
                    f"max_ack_pending {ack_pending} / {window} in flight per replica = {usable} replicas"
                )
    return out


def gpu_problems(objects: list[dict]) -> list[str]:
    """GPU Deployments against the eksctl node group their node selector picks."""
    pools = node_pool_labels()
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in by_kind(objects, "ScaledObject")}
    out = []
    for d in by_kind(objects, "Deployment"):
        spec = d["spec"]["template"]["spec"]
        per_replica = sum(gpus(c) for c in spec["containers"])
        if not per_replica:
            continue
        selector = spec.get("nodeSelector", {})
        groups = [g for g in pools.values() if selector and all(g.get("labels", {}).get(k) == v for k, v in selector.items())]
        if len(groups) != 1:
            out.append(f"{name_of(d)}: its nodeSelector picks {len(groups)} node groups, expected one")
            continue
        (group,) = groups
        per_node = int(group.get("tags", {}).get(GPU_TAG, 0))
        fits = group["maxSize"] * (per_node // per_replica)
        so = scaled.get(d["metadata"]["name"])
        wanted = so["spec"].get("maxReplicaCount", 100) if so else 0
        if wanted > fits:
            out.append(
                f"{name_of(so)}: maxReplicaCount {wanted} exceeds what node group {group['name']} holds: "
                f"maxSize {group['maxSize']} x {per_node} GPU per node / {per_replica} per replica = {fits} replicas"
            )
        out += rollout_problems(d, objects)
    return out


def rollout_problems(d: dict, objects: list[dict]) -> list[str]:
    """A GPU rollout must not need a free GPU: maxSurge 0, and the PDB allows what it takes."""
    rolling = d["spec"].get("strategy", {}).get("rollingUpdate", {})
    surge, unavailable = rolling.get("maxSurge", "25%"), rolling.get("maxUnavailable", "25%")
    out = []
    if surge != 0 or not isinstance(unavailable, int) or unavailable < 1:
        out.append(
            f"{name_of(d)}: rollout maxSurge {surge}, maxUnavailable {unavailable} stalls on a full GPU node group "
            "(a surge pod needs a free GPU): use maxSurge 0, maxUnavailable 1"
        )
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        if selects(pdb["spec"]["selector"], pod_labels(d)) and pdb["spec"].get("maxUnavailable") != unavailable:
            out.append(
                f"{name_of(pdb)}: maxUnavailable {pdb['spec'].get('maxUnavailable')} disagrees with the rollout's {unavailable}"
            )
    return out


def fallback_problems(objects: list[dict]) -> list[str]:
    out = []
    for so in by_kind(objects, "ScaledObject"):
        spec = so["spec"]
        fallback = spec.get("fallback")
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if not fallback:
            out.append(f"{name_of(so)}: no fallback: when the lag cannot be read nothing scales (and a tier at 0 stays at 0)")
            continue
        if fallback["failureThreshold"] < 1 or not max(low, 1) <= fallback["replicas"] <= high:
            out.append(
                f"{name_of(so)}: fallback {fallback['replicas']} replicas after {fallback['failureThreshold']} failures: "
                f"needs at least 1 failure and between {max(low, 1)} and {high} replicas"
            )
    return out


def check_capacity(report: Report, overlay: str, objects: list[dict], contract: Contract | None) -> None:
    report.add(f"{overlay}: ScaledObjects stay within what their consumers feed", consumer_problems(objects, contract))
    if overlay == "eks":
        report.add("eks: GPU ScaledObjects fit their node group, GPU rollouts need no free GPU", gpu_problems(objects))
    report.add(f"{overlay}: every ScaledObject has a fallback for when the lag cannot be read", fallback_problems(objects))
