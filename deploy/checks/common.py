"""What every deploy check shares: paths, the report, tools, YAML loading, the contract.

The contract is what the code says (stream and consumer names as provisioned, and each binary's
`--help`, from which the environment variables it reads and their defaults are parsed). The Rust
test `tests/tests/deploy.rs` writes it; without it the checks that need it are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The checkout checked: this one, or a copy (CLOTHESLINE_DEPLOY_ROOT; tests/tests/deploy.rs checks
# mutated copies to show that each check fails on what it guards against).
ROOT = Path(os.environ.get("CLOTHESLINE_DEPLOY_ROOT") or Path(__file__).resolve().parents[2]).resolve()


def _schemas() -> Path:
    """shared/schemas beside the checkout, or beside a folder above it (a git worktree)."""
    here = Path(__file__).resolve().parents[2]
    for folder in (here, *here.parents):
        if (folder.parent / "shared" / "schemas").is_dir():
            return folder.parent / "shared" / "schemas"
    return here.parent / "shared" / "schemas"


SCHEMAS = _schemas()
K8S_VERSION = "1.34"  # validated against; eksctl-cluster.yaml's metadata.version must match
NAMESPACE = "clothesline"
OVERLAYS = {"base": ROOT / "k8s/base", "kind": ROOT / "k8s/overlays/kind", "eks": ROOT / "k8s/overlays/eks"}
GUIDE = ROOT / "k8s/README.md"
TIERS = ("ingress", "preprocessor", "gpu-worker")
# The variable holding each tier's HTTP address (API or health and metrics).
HTTP_ADDR = {
    "ingress": "INGRESS_HTTP_ADDR",
    "preprocessor": "PREPROCESSOR_HTTP_ADDR",
    "gpu-worker": "GPU_WORKER_HTTP_ADDR",
}
BINARIES = {
    "ingress": "clothesline-ingress",
    "preprocessor": "clothesline-preprocessor",
    "gpu-worker": "clothesline-gpu-worker",
    "provision": "clothesline-provision",
}


@dataclass
class Report:
    """Named checks, each passing when it collected no problem."""

    results: list[tuple[str, list[str]]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, problems: list[str]) -> None:
        self.results.append((name, list(problems)))
        mark = "ok  " if not problems else "FAIL"
        print(f"{mark} {name}")
        for p in problems:
            print(f"       - {p}")
        sys.stdout.flush()

    def skip(self, name: str, why: str) -> None:
        self.skipped.append((name, why))
        print(f"skip {name}: {why}")

    @property
    def failed(self) -> int:
        return sum(1 for _, p in self.results if p)

    def summary(self) -> str:
        passed = len(self.results) - self.failed
        line = f"deploy checks: {passed} passed, {self.failed} failed"
        return line + (f", {len(self.skipped)} skipped" if self.skipped else "")


def tool(name: str) -> str:
    """A command-line tool: beside this Python first (the venv of scripts/deps.sh), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    for extra in ("/usr/sbin", "/usr/local/bin"):
        if (Path(extra) / name).exists() and not shutil.which(name):
            return str(Path(extra) / name)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: run `source scripts/deps.sh` (it installs it)")
    return found


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def load_yaml_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@dataclass
class Option:
    env: str
    default: str | None


@dataclass
class Contract:
    """Names the code provisions and the options each binary reads."""

    consumers: list[dict]  # {tier, stream, subject, consumer}
    options: dict[str, dict[str, Option]]  # tier -> env var -> option

    @staticmethod
    def load(path: Path) -> "Contract":
        raw = json.loads(path.read_text())
        options = {tier: parse_help(raw["help"][BINARIES[tier]]) for tier in BINARIES}
        return Contract(consumers=raw["consumers"], options=options)

    def env_names(self, tier: str) -> set[str]:
        return set(self.options[tier])

    def default(self, tier: str, env: str) -> str | None:
        return self.options[tier][env].default


_OPTION_START = re.compile(r"^\s*(-\w, )?--[a-z]")


def parse_help(text: str) -> dict[str, Option]:
    """Environment variables and defaults from a clap `--help` (one block per option)."""
    blocks: list[str] = []
    for line in text.splitlines():
        if _OPTION_START.match(line):
            blocks.append(line)
        elif blocks:
            blocks[-1] += " " + line.strip()
    options = {}
    for block in blocks:
        env = re.search(r"\[env: ([A-Z0-9_]+)[=\]]", block)
        if not env:
            continue
        default = re.search(r"\[default: ([^\]]*)\]", block)
        options[env.group(1)] = Option(env.group(1), default.group(1) if default else None)
    return options


def container_env(container: dict) -> dict[str, str | None]:
    """A container's environment: literal values, None for values from a reference."""
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])
