#!/usr/bin/env python3
"""Offline checks of everything that deploys clothesline: the Dockerfiles (hadolint, and what they
build and configure), compose.yml (the Compose schema, start order, health checks), Prometheus and
Grafana (scrape targets, metrics that exist), and the Kubernetes manifests: every overlay renders
with `kubectl kustomize`, every object and the eksctl config validate against strict schemas, the
workloads are hardened and scaled, the NetworkPolicies allow exactly the needed flows, and the names
that must agree with the code do (streams, consumers, ports, probe paths, environment variables).

    python deploy/check.py [--contract FILE]   # all checks; exit 1 when one fails
    python deploy/check.py consistency         # only the files against each other (no schemas, lints)
    python deploy/check.py scaledobjects       # JSON: every ScaledObject trigger of every overlay

CLOTHESLINE_DEPLOY_ROOT=<copy> checks a copy of the checkout instead (tests/tests/deploy.rs mutates
copies to show each consistency check fails on what it guards against).

Run by tests/tests/deploy.rs, which writes the contract (names from the code, each binary's --help).
Needs the tools scripts/deps.sh installs (kubectl, hadolint, shellcheck, nats-server, Python
packages) and ../shared/schemas.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    from checks import capacity, compose, contract, docker, guide, monitoring, netpol, placement, render, workloads
    from checks.common import ROOT, Contract, Report
except ModuleNotFoundError as e:  # run with a Python that lacks the packages
    sys.exit(f"{e}: run with the Python of `source scripts/deps.sh` ($TORCH_VENV/bin/python)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="all", choices=["all", "consistency", "scaledobjects"])
    parser.add_argument("--contract", type=Path, help="JSON written by tests/tests/deploy.rs")
    args = parser.parse_args()

    if args.command == "scaledobjects":
        rendered = {o: render.render(o) for o in ("kind", "eks")}
        print(json.dumps(render.scaled_object_triggers(rendered), indent=2))
        return 0

    started = time.monotonic()
    report = Report()
    code = Contract.load(args.contract) if args.contract else None

    if args.command == "consistency":
        rendered = {overlay: render.render(overlay) for overlay in ("base", "kind", "eks")}
        check_consistency(report, rendered, code)
        print(f"{report.summary()} ({time.monotonic() - started:.1f} s)")
        return 1 if report.failed else 0

    rendered = render.check_manifests(report)
    render.check_cluster_configs(report)
    for overlay, objects in rendered.items():
        workloads.check_workloads(report, overlay, objects)
        netpol.check_network_policies(report, overlay, objects)
        placement.check_placement(report, overlay, objects)
        if code:
            contract.check_scaled_objects(report, overlay, objects, code)
            contract.check_tiers(report, overlay, objects, code)
        else:
            report.skip(f"{overlay}: names against the code", "no --contract")
    check_consistency(report, rendered, code)
    check_kind_port(report, rendered.get("kind", []))
    docker.check_nats_configs(report, rendered)
    compose.check_compose(report, code)
    compose.check_grafana(report)
    docker.check_images(report, code)

    print(f"{report.summary()} ({time.monotonic() - started:.1f} s)")
    return 1 if report.failed else 0


def check_consistency(report: Report, rendered: dict[str, list[dict]], code: Contract | None) -> None:
    """The files against each other: capacities, fallbacks, rollouts, images, exposure, the
    dashboard and alerts, where the traces go, the guide."""
    for overlay, objects in rendered.items():
        capacity.check_capacity(report, overlay, objects, code)
        placement.check_exposure(report, overlay, objects)
        if overlay != "base":
            contract.check_images(report, overlay, objects)
    monitoring.check_monitoring(report, rendered)
    compose.check_traces(report)
    guide.check_guide(report, rendered)


def check_kind_port(report: Report, objects: list[dict]) -> None:
    """The kind overlay's NodePort is what kind-cluster.yaml maps to the host."""
    mapped = render.kind_host_ports()
    problems = []
    for svc in workloads.by_kind(objects, "Service"):
        for port in svc["spec"]["ports"]:
            if "nodePort" in port and port["nodePort"] not in mapped:
                problems.append(f"NodePort {port['nodePort']} of {svc['metadata']['name']} is not mapped by kind-cluster.yaml")
    if not any("nodePort" in p for s in workloads.by_kind(objects, "Service") for p in s["spec"]["ports"]):
        problems.append("the kind overlay exposes no NodePort")
    report.add("kind: the API's NodePort reaches the host", problems)


if __name__ == "__main__":
    sys.exit(main())
