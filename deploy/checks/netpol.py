"""NetworkPolicies, evaluated: the flows the system needs are allowed, and the ones it does not
need are denied. A small evaluator of the NetworkPolicy semantics (pod and namespace selectors,
ipBlock with exceptions, ports, default allow for pods no policy selects) over the rendered pods
and a few stand-ins from outside the namespace (KEDA, Prometheus, DNS, the internet).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .common import NAMESPACE, Report
from .workloads import WORKLOADS, by_kind, pod_labels, selects


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict = field(hash=False)

    @property
    def ns_labels(self) -> dict:
        return {"kubernetes.io/metadata.name": self.namespace}


@dataclass(frozen=True)
class Outside:
    """An address outside the cluster."""

    ip: str

    @property
    def name(self) -> str:
        return self.ip


def peer_matches(peer: dict, other: Pod | Outside, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        if not isinstance(other, Outside):
            return False
        addr = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return addr in ipaddress.ip_network(block["cidr"]) and not any(
            addr in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if isinstance(other, Outside):
        return False
    if "namespaceSelector" in peer:
        ns_ok = selects(peer["namespaceSelector"], other.ns_labels)
    else:
        ns_ok = other.namespace == policy_ns
    return ns_ok and selects(peer.get("podSelector", {}), other.labels)


def port_matches(rules: list[dict] | None, port: int, protocol: str) -> bool:
    if not rules:
        return True
    for r in rules:
        if r.get("protocol", "TCP") != protocol:
            continue
        if "port" not in r:
            return True
        if not isinstance(r["port"], int):
            raise ValueError(f"named port {r['port']!r}: use numbers in NetworkPolicies")
        if r["port"] <= port <= r.get("endPort", r["port"]):
            return True
    return False


def side_allows(policies: list[dict], pod: Pod, other: Pod | Outside, port: int, protocol: str, kind: str) -> bool:
    """Whether the policies selecting `pod` let it talk to (Egress) or hear from (Ingress) `other`."""
    key, peers_key = ("egress", "to") if kind == "Egress" else ("ingress", "from")
    applicable = [
        p
        for p in policies
        if p["metadata"].get("namespace", NAMESPACE) == pod.namespace
        and selects(p["spec"].get("podSelector", {}), pod.labels)
        and kind in p["spec"].get("policyTypes", ["Ingress"] + (["Egress"] if "egress" in p["spec"] else []))
    ]
    if not applicable:
        return True
    for p in applicable:
        ns = p["metadata"].get("namespace", NAMESPACE)
        for rule in p["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(peer, other, ns) for peer in peers)) and port_matches(
                rule.get("ports"), port, protocol
            ):
                return True
    return False


def allowed(policies: list[dict], src: Pod | Outside, dst: Pod | Outside, port: int, protocol: str = "TCP") -> bool:
    ok = True
    if isinstance(src, Pod) and src.namespace == NAMESPACE:
        ok &= side_allows(policies, src, dst, port, protocol, "Egress")
    if isinstance(dst, Pod) and dst.namespace == NAMESPACE:
        ok &= side_allows(policies, dst, src, port, protocol, "Ingress")
    return ok


def http_port(objects: list[dict], name: str) -> int:
    (w,) = [o for o in objects if o["kind"] in WORKLOADS and o["metadata"]["name"] == name]
    return next(
        p["containerPort"]
        for c in w["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
        if p["name"] in ("http", "metrics")
    )


def check_network_policies(report: Report, overlay: str, objects: list[dict]) -> None:
    policies = by_kind(objects, "NetworkPolicy")
    pods = {
        o["metadata"]["name"]: Pod(o["metadata"]["name"], NAMESPACE, pod_labels(o))
        for o in objects
        if o["kind"] in WORKLOADS
    }
    keda = Pod("keda-operator", "keda", {"app": "keda-operator"})
    prometheus = Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    dns = Pod("coredns", "kube-system", {"k8s-app": "kube-dns"})
    stranger = Pod("stranger", "default", {"app.kubernetes.io/name": "nats"})
    web4, web6, client = Outside("93.184.215.14"), Outside("2606:2800:21f:cb07:6820:80da:af6b:8b2c"), Outside("198.51.100.7")
    nats = pods["nats"]
    ports = {t: http_port(objects, t) for t in ("ingress", "preprocessor", "gpu-worker")}
    exporter_port = http_port(objects, "nats")

    must = [(c, nats, 4222) for c in pods.values() if c.labels.get("clothesline.io/nats-client") == "true"]
    must += [
        (client, pods["ingress"], ports["ingress"]),
        (nats, nats, 6222),
        (keda, nats, 8222),
        (prometheus, nats, exporter_port),
        (pods["preprocessor"], web4, 443),
        (pods["preprocessor"], web6, 443),
        (pods["preprocessor"], web4, 8080),
    ]
    must += [(prometheus, pods[t], ports[t]) for t in ports]
    must_not = [
        (pods["preprocessor"], Outside(ip), 80)
        for ip in ("10.0.12.7", "172.20.0.10", "192.168.1.1", "169.254.169.254", "100.64.0.1", "fd00::1")
    ]
    must_not += [(pods[t], web4, 443) for t in ("ingress", "gpu-worker", "nats", "provision")]
    must_not += [
        (stranger, nats, 4222),
        (stranger, pods["preprocessor"], ports["preprocessor"]),
        (keda, nats, 4222),
        (pods["preprocessor"], nats, 8222),
        (pods["preprocessor"], pods["gpu-worker"], ports["gpu-worker"]),
        (pods["ingress"], pods["preprocessor"], ports["preprocessor"]),
        (client, nats, 4222),
        (client, pods["gpu-worker"], ports["gpu-worker"]),
    ]
    problems = [f"{s.name} -> {d.name}:{p} is denied" for s, d, p in must if not allowed(policies, s, d, p)]
    problems += [
        f"{p.name} -> {dns.name}:53/UDP is denied"
        for p in pods.values()
        if not allowed(policies, p, dns, 53, "UDP")
    ]
    problems += [f"{s.name} -> {d.name}:{p} is allowed" for s, d, p in must_not if allowed(policies, s, d, p)]
    default_deny = any(
        p["spec"].get("podSelector") == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    )
    if not default_deny:
        problems.append("no default-deny policy (every pod, Ingress and Egress, no rule)")
    report.add(
        f"{overlay}: NetworkPolicies allow the {len(must) + len(pods)} needed flows and deny {len(must_not)} others",
        problems,
    )
