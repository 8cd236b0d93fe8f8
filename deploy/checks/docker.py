"""Images and scripts, as far as they can be checked without a Docker engine: hadolint on every
Dockerfile; each builds and runs its tier's binary, as a non-root user, with the environment the
binary reads and the port it listens on; .dockerignore keeps what the build needs; shellcheck on
the image scripts; nats-server accepts every NATS config.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from pathlib import Path

from .common import BINARIES, HTTP_ADDR, ROOT, Contract, Report, port_of, rel, run, tool
from .contract import nats_conf
from .workloads import by_kind

# Variables set for the platform rather than for a binary's options.
SYSTEM_ENV = {"LD_LIBRARY_PATH", "NVIDIA_DRIVER_CAPABILITIES", "HOME", "CUDA_CACHE_PATH"}
SCRIPTS = ("scripts/build-images.sh", "scripts/push-ecr.sh")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (w, _) in enumerate(steps) if w == "FROM")
    return steps[last:]


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, rest in steps:
        if word == "ENV":
            env.update(dict(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", rest)))
    return env


def workspace_bins() -> dict[str, tuple[str, Path]]:
    """binary name -> (package, its folder), from the workspace's Cargo.toml files."""
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]
    out = {}
    for member in workspace["members"]:
        manifest = tomllib.loads((ROOT / member / "Cargo.toml").read_text())
        package = manifest["package"]["name"]
        if (ROOT / member / "src/main.rs").exists():
            out[package] = (package, ROOT / member)
        for b in manifest.get("bin", []):
            out[b["name"]] = (package, ROOT / member)
    return out


def dockerfile_problems(tier: str, contract: Contract | None) -> list[str]:
    path = ROOT / f"docker/{tier}.Dockerfile"
    steps = instructions(path)
    binary = BINARIES[tier]
    package, _ = workspace_bins()[binary]
    text = " ".join(rest for _, rest in steps)
    out = []
    # The recipe is the whole workspace: pruning it to one binary (`prepare --bin`) rewrites the
    # lock file for fewer packages, which `cook --locked` then refuses.
    if "cargo chef prepare --recipe-path" not in text:
        out.append("does not run `cargo chef prepare` on the whole workspace")
    for cmd in (f"cargo chef cook --release --locked -p {package} --bin {binary}",
                f"cargo build --release --locked -p {package} --bin {binary}"):
        if cmd not in text:
            out.append(f"does not run `{cmd}`")
    channel = tomllib.loads((ROOT / "rust-toolchain.toml").read_text())["toolchain"]["channel"]
    if f"RUST_IMAGE=rust:{channel}-" not in text:
        out.append(f"the builder image is not rust:{channel} (rust-toolchain.toml)")
    final = final_stage(steps)
    words = dict(final)
    if words.get("ENTRYPOINT") != f'["/usr/local/bin/{binary}"]':
        out.append(f"the entrypoint is not /usr/local/bin/{binary}")
    if f"/src/target/release/{binary} /usr/local/bin/{binary}" not in " ".join(r for w, r in final if w == "COPY"):
        out.append("the release binary is not copied into the runtime image")
    user = words.get("USER", "0").split(":")[0]
    if not user.isdigit() or user == "0":
        out.append(f"USER {user!r} is not a numeric non-root user")
    env = env_of(final)
    if contract:
        unknown = set(env) - contract.env_names(tier) - SYSTEM_ENV
        out += [f"ENV {v}: {binary} reads no such variable" for v in sorted(unknown)]
    if tier in HTTP_ADDR:
        addr = env.get(HTTP_ADDR[tier], "")
        if not addr or words.get("EXPOSE") != str(port_of(addr)):
            out.append(f"EXPOSE {words.get('EXPOSE')} is not the port of {HTTP_ADDR[tier]}={addr}")
        if contract and addr != contract.default(tier, HTTP_ADDR[tier]):
            out.append(f"{HTTP_ADDR[tier]}={addr} differs from the binary's default")
    if tier in ("preprocessor", "gpu-worker"):
        if env.get("MODEL_MANIFEST") != "/app/model/manifest.json" or "model/manifest.json" not in text:
            out.append("the model manifest is not baked in at /app/model/manifest.json")
    if tier == "gpu-worker":
        out += torch_problems(steps, env, text)
    if tier == "preprocessor" and not re.search(r"apt-get install .*cmake.*nasm", text):
        out.append("cmake and nasm (libjpeg-turbo) are not installed for the build")
    return out


def torch_problems(steps: list[tuple[str, str]], env: dict[str, str], text: str) -> list[str]:
    out = []
    manifest = json.loads((ROOT / "model/manifest.json").read_text())
    if f"model/{manifest['file']}" not in text:
        out.append(f"the model file model/{manifest['file']} is not baked in")
    deps = (ROOT / "scripts/deps.sh").read_text()
    version = re.search(r'TORCH_VERSION="\$\{TORCH_VERSION:-([0-9.]+)\}"', deps).group(1)
    if f"TORCH_VERSION={version}" not in text:
        out.append(f"torch is not {version}, the version scripts/deps.sh installs")
    build_lib = env_of(steps).get("TORCH_LIB")
    if not build_lib or env.get("LD_LIBRARY_PATH") != build_lib:
        out.append("the runtime LD_LIBRARY_PATH is not the TORCH_LIB the binary was linked with")
    copied = " ".join(r for w, r in final_stage(steps) if w == "COPY")
    for lib in (build_lib, str(Path(build_lib or "/").parents[1] / "nvidia")):
        if f"{lib} {lib}" not in copied:
            out.append(f"{lib} is not copied to the same path in the runtime image")
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore patterns leave `path` out (Docker's rules: last match wins, a
    pattern matching a parent folder matches what is inside)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        rx = re.escape(body.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        rx = rx.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(rx, c) for c in candidates):
            out = not negate
    return out


def dockerignore_problems() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]
    needed = ["Cargo.toml", "Cargo.lock", "model/manifest.json", "model/clothes.pt"]
    for folder in workspace["members"] + ["nats"]:
        for dirpath, dirs, files in os.walk(ROOT / folder):
            dirs[:] = [d for d in dirs if d not in ("target", "__pycache__")]
            needed += [rel(Path(dirpath) / f) for f in files]
    out = [f"{p} is left out of the build context" for p in needed if ignored(p, patterns)]
    for p in ("target/release/x", ".git/HEAD", "k8s/base/kustomization.yaml", "model/train.py", "rust-toolchain.toml"):
        if not ignored(p, patterns):
            out.append(f"{p} is sent to the build context")
    return out


def check_images(report: Report, contract: Contract | None) -> None:
    tiers = sorted(p.name.removesuffix(".Dockerfile") for p in (ROOT / "docker").glob("*.Dockerfile"))
    if tiers != sorted(BINARIES):
        report.add("one Dockerfile per tier", [f"docker/ has {tiers}, the tiers are {sorted(BINARIES)}"])
    hadolint = tool("hadolint")
    for tier in tiers:
        path = ROOT / f"docker/{tier}.Dockerfile"
        lint = run([hadolint, "--no-color", str(path)])
        problems = [ln for ln in (lint.stdout + lint.stderr).splitlines() if ln.strip()]
        if lint.returncode and not problems:
            problems = [f"hadolint exited {lint.returncode}"]
        report.add(f"hadolint {rel(path)}", problems)
        report.add(f"{rel(path)} builds, runs and configures {BINARIES[tier]}", dockerfile_problems(tier, contract))
    report.add(".dockerignore keeps what the build needs, and only that", dockerignore_problems())
    lint = run([tool("shellcheck"), *[str(ROOT / s) for s in SCRIPTS]])
    report.add(f"shellcheck {' '.join(SCRIPTS)}", [ln for ln in lint.stdout.splitlines() if ln.strip()])
    problems = []
    for script in SCRIPTS:
        listed = re.search(r"(?:ALL_TIERS|TIERS)=\(([^)]*)\)", (ROOT / script).read_text()).group(1).split()
        if sorted(listed) != tiers:
            problems.append(f"{script} handles {listed}, docker/ has {tiers}")
    report.add("the image scripts handle every tier", problems)


# The users of nats/auth.conf, as their password variables spell them.
NATS_ROLES = ("INGRESS", "PREPROCESSOR", "GPU_WORKER", "PROVISION", "PUBLIC", "BULK")


def check_nats_configs(report: Report, rendered: dict[str, list[dict]]) -> None:
    """`nats-server -t` (parse and check, unknown fields refused) on every NATS config."""
    configs = {"nats/nats-server.conf": (ROOT / "nats/nats-server.conf").read_text()}
    for overlay, objects in rendered.items():
        if by_kind(objects, "ConfigMap"):
            configs[f"{overlay}: ConfigMap nats-config"] = nats_conf(objects)
    server = tool("nats-server")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in configs.items():
            path = Path(tmp) / "nats.conf"
            path.write_text(text)
            # The per-role passwords come from the environment (Secret nats-users): placeholders.
            passwords = {f"NATS_PASSWORD_{role}": "check" for role in NATS_ROLES}
            env = {**os.environ, "POD_NAME": "nats-0", **passwords}
            out = run([server, "-t", "-c", str(path)], env=env)
            report.add(f"nats-server -t accepts {name}", [] if out.returncode == 0 else [out.stderr.strip()])
