"""k8s/README.md, the guide, against what it deploys: KEDA's chart installed at one exact version
(the one whose missing-consumer behaviour the guide describes), every example request an upload
of an image shipped in the repository, and the teardown deleting the volumes before their
namespace (a namespace deleted first takes the claims with it, and the EBS volumes may outlive
the cluster).
"""

from __future__ import annotations

import re

from .common import GUIDE, Report

EXACT = re.compile(r"--version[ =](\d+\.\d+\.\d+)\b")


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


def check_guide(report: Report) -> None:
    text = GUIDE.read_text()
    report.add("k8s/README.md: KEDA pinned to one exact version, described as pinned", keda_problems(text))
    report.add("k8s/README.md: every example request uploads an image of examples/images", request_problems(text))
    report.add("k8s/README.md: teardown deletes the volumes before the namespace", teardown_problems(text))
