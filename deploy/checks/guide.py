"""k8s/README.md, the guide, against what it deploys: KEDA's chart installed at one exact version
(the one whose missing-consumer behaviour the guide describes), every example request an upload
of an image shipped in the repository, the teardown deleting the volumes before their namespace
(a namespace deleted first takes the claims with it, and the EBS volumes may outlive the
cluster), the scaling table's replicas and fallbacks as rendered, and the GPU quota it asks for
enough for the GPU node group's maximum.
"""

from __future__ import annotations

import re

from .common import GUIDE, Report
from .render import node_pool_labels
from .workloads import by_kind

EXACT = re.compile(r"--version[ =](\d+\.\d+\.\d+)\b")
# vCPUs of the GPU instance types the gpu node group may use (the EC2 G quota counts vCPUs).
VCPUS = {"g4dn.xlarge": 4, "g5.xlarge": 4, "g5.2xlarge": 8, "g6.xlarge": 4, "g6.2xlarge": 8}


def shell_lines(text: str) -> list[str]:
    """The lines of the guide's shell blocks, continuation lines joined."""
    lines, inside, pending = [], False, ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((pending + line).strip())
        pending = ""
    return lines


def keda_problems(text: str) -> list[str]:
    installs = [line for line in shell_lines(text) if re.search(r"helm (install|upgrade)\b.*\bkedacore/keda\b", line)]
    if not installs:
        return ["the guide installs no KEDA"]
    versions = {m.group(1) for line in installs if (m := EXACT.search(line))}
    out = [f"KEDA installed without an exact --version: {line}" for line in installs if not EXACT.search(line)]
    if len(versions) > 1:
        out.append(f"KEDA installed at different versions: {sorted(versions)}")
    for version in versions:
        if f"KEDA {version}" not in text:
            out.append(f"the guide does not say what KEDA {version} (the pinned version) does")
    return out


def request_problems(text: str) -> list[str]:
    calls = [line for line in shell_lines(text) if re.search(r"\bcurl\b.*(/v1/classify|/predict)", line)]
    if not calls:
        return ["the guide makes no request"]
    out = []
    for call in calls:
        if not re.search(r"--data-binary @examples/images/[a-z_-]+\.jpg\b", call):
            out.append(f"not an upload of an image in examples/images/: {call}")
    return out


def teardown_problems(text: str) -> list[str]:
    lines = shell_lines(text.split("### Deleting everything", 1)[-1])
    pvc = next((i for i, line in enumerate(lines) if re.search(r"kubectl .*delete pvc", line)), None)
    namespace = next(
        (i for i, line in enumerate(lines) if re.search(r"kubectl delete (-k k8s/overlays/\w+(?!\w| -l)|namespace)", line)),
        None,
    )
    if pvc is None:
        return ["the teardown deletes no PersistentVolumeClaim"]
    if namespace is not None and namespace < pvc:
        return [f"the teardown deletes the namespace ({lines[namespace]}) before the volumes ({lines[pvc]})"]
    return []


def table_problems(text: str, rendered: dict[str, list[dict]]) -> list[str]:
    """The scaling table's rows (`| tier | ... | replicas | fallback |`) against the ScaledObjects."""
    scaled = {
        overlay: {s["spec"]["scaleTargetRef"]["name"]: s["spec"] for s in by_kind(objects, "ScaledObject")}
        for overlay, objects in rendered.items()
    }
    out, rows = [], 0
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] not in scaled.get("eks", {}):
            continue
        rows += 1
        tier, replicas, fallback = cells[0], cells[4], cells[5]
        base = re.match(r"(\d+) to (\d+)", replicas)
        said = {"base": base.group(2) if base else None}
        for overlay, word in (("kind", "kind"), ("eks", "EKS")):
            m = re.search(rf"{word} (?:\d+ to )?(\d+)", replicas)
            said[overlay] = m.group(1) if m else said["base"]
        for overlay, value in said.items():
            spec = scaled.get(overlay, {}).get(tier, {})
            if value != str(spec.get("maxReplicaCount")):
                out.append(f"the table gives {tier} at most {value} replicas on {overlay}, the ScaledObject {spec.get('maxReplicaCount')}")
        wanted = scaled["eks"][tier].get("fallback", {}).get("replicas")
        if fallback != str(wanted):
            out.append(f"the table gives {tier} a fallback of {fallback}, the ScaledObject {wanted}")
    return out if rows else ["no scaling table (| tier | ... | replicas | fallback |)"]


def quota_problems(text: str) -> list[str]:
    """The EC2 G-instance quota (vCPUs) the guide asks for holds the gpu node group at its maximum."""
    asked = re.search(r"--quota-code L-DB2E81BA --desired-value (\d+)", text)
    gpu = node_pool_labels()["gpu"]
    needed = gpu["maxSize"] * VCPUS.get(gpu["instanceType"], 0)
    if not asked or int(asked.group(1)) < needed:
        got = asked.group(1) if asked else "nothing"
        return [f"the guide asks for {got} G vCPUs, the gpu node group needs {needed} ({gpu['maxSize']} x {gpu['instanceType']})"]
    return []


def check_guide(report: Report, rendered: dict[str, list[dict]]) -> None:
    text = GUIDE.read_text()
    report.add("k8s/README.md: the scaling table says the rendered maxima and fallbacks", table_problems(text, rendered))
    report.add("k8s/README.md: the GPU quota asked for holds the gpu node group at its maximum", quota_problems(text))
    report.add("k8s/README.md: KEDA pinned to one exact version, described as pinned", keda_problems(text))
    report.add("k8s/README.md: every example request uploads an image of examples/images", request_problems(text))
    report.add("k8s/README.md: teardown deletes the volumes before the namespace", teardown_problems(text))
