"""Images and scripts, as far as they can be checked without a Docker engine: hadolint on every
Dockerfile (the tiers', the CPU-only gpu-worker variant's and docker/base/'s); each builds and runs
its tier's binary, as a non-root user, with the environment the binary reads and the port it
listens on, both ways (compiled in Docker, the last stage; copied from a host build, the `prebuilt`
stage, which needs no Rust image); .dockerignore keeps what the build needs; shellcheck on the image
and compose scripts; nats-server accepts every NATS config.
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
SCRIPTS = (
    "scripts/build-images.sh",
    "scripts/push-ecr.sh",
    "scripts/base-images.sh",
    "scripts/compose-test.sh",
    "scripts/lib/compose.sh",
    "scripts/partition-test.sh",
)
# Images that are a variant of a tier's: image -> tier.
VARIANTS = {"gpu-worker-cpu": "gpu-worker"}


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


def stages(steps: list[tuple[str, str]]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(name, base, steps) of each stage in order; the name is "" for an unnamed stage."""
    out = []
    for word, rest in steps:
        if word == "FROM":
            base, _, name = rest.partition(" AS ")
            out.append((name.strip(), base.strip(), []))
        elif out:
            out[-1][2].append((word, rest))
    return out


def effective(all_stages: list, index: int) -> list[tuple[str, str]]:
    """A stage's instructions with those of the stages it is built FROM, oldest first."""
    name, base, own = all_stages[index]
    earlier = {n: i for i, (n, _, _) in enumerate(all_stages[:index]) if n}
    inherited = effective(all_stages, earlier[base]) if base in earlier else []
    return inherited + [("FROM", base)] + own


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    all_stages = stages(steps)
    return effective(all_stages, len(all_stages) - 1)


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


def image_names() -> list[str]:
    return sorted(p.name.removesuffix(".Dockerfile") for p in (ROOT / "docker").glob("*.Dockerfile"))


def dockerfile_problems(image: str, contract: Contract | None) -> list[str]:
    path = ROOT / f"docker/{image}.Dockerfile"
    tier = VARIANTS.get(image, image)
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
    out += prebuilt_problems(steps, binary)
    for label, stage_steps, source in (("the last stage", final_stage(steps), f"/src/target/release/{binary}"),
                                       ("the prebuilt stage", prebuilt_stage(steps), f"target/prebuilt/{binary}")):
        out += [f"{label}: {p}" for p in runtime_problems(image, tier, stage_steps, source, contract)]
    if tier == "gpu-worker":
        out += torch_problems(image, steps, env_of(final_stage(steps)), text)
    if tier == "preprocessor" and not re.search(r"apt-get install .*cmake.*nasm", text):
        out.append("cmake and nasm (libjpeg-turbo) are not installed for the build")
    return out


def prebuilt_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    all_stages = stages(steps)
    names = [n for n, _, _ in all_stages]
    return effective(all_stages, names.index("prebuilt")) if "prebuilt" in names else []


def prebuilt_problems(steps: list[tuple[str, str]], binary: str) -> list[str]:
    """`--target prebuilt` must work on the legacy builder without a registry: it builds every
    stage up to the target, so none of those may start from the Rust image."""
    all_stages = stages(steps)
    names = [n for n, _, _ in all_stages]
    if "prebuilt" not in names:
        return ["no `prebuilt` stage (copying a host build)"]
    out = []
    for name, base, _ in all_stages[: names.index("prebuilt") + 1]:
        if "RUST_IMAGE" in base:
            out.append(f"stage {name or base} before `prebuilt` starts from the Rust image")
    if all_stages[-1][1] != all_stages[names.index("prebuilt")][1]:
        out.append("the prebuilt and the last stage do not start from the same stage")
    return out


def runtime_problems(image: str, tier: str, final: list[tuple[str, str]], source: str,
                     contract: Contract | None) -> list[str]:
    binary = BINARIES[tier]
    words = dict(final)
    out = []
    if words.get("ENTRYPOINT") != f'["/usr/local/bin/{binary}"]':
        out.append(f"the entrypoint is not /usr/local/bin/{binary}")
    if f"{source} /usr/local/bin/{binary}" not in " ".join(r for w, r in final if w == "COPY"):
        out.append(f"{source} is not copied into the runtime image")
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
        copied = " ".join(r for w, r in final if w == "COPY")
        if env.get("MODEL_MANIFEST") != "/app/model/manifest.json" or "model/manifest.json" not in copied:
            out.append("the model manifest is not baked in at /app/model/manifest.json")
    if image == "gpu-worker-cpu" and env.get("DEVICE") != "cpu":
        out.append("the CPU-only image does not set DEVICE=cpu")
    return out


def torch_problems(image: str, steps: list[tuple[str, str]], env: dict[str, str], text: str) -> list[str]:
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
    nvidia = str(Path(build_lib or "/").parents[1] / "nvidia")
    for label, stage_steps, src in (("the last stage", final_stage(steps), ""),
                                    ("the prebuilt stage", prebuilt_stage(steps), "target/prebuilt/")):
        copied = " ".join(r for w, r in stage_steps if w == "COPY")
        if image == "gpu-worker-cpu":
            # Only the CPU libraries (and the two CUDA runtime ones libtorch_cpu links), no CUDA.
            for lib in ("torch/lib/libtorch_cpu.so", "torch/lib/libc10.so", "nvidia/cu13/lib/libcudart.so.13"):
                if f"{src or '/opt/torch/'}{lib}" not in copied:
                    out.append(f"{label}: {lib} is not copied")
            if "libtorch_cuda" in copied or re.search(r"nvidia /opt", copied):
                out.append(f"{label}: copies CUDA libraries into the CPU-only image")
            continue
        for lib in (build_lib, nvidia):
            source = f"{src}{lib.removeprefix('/opt/torch/')}" if src else lib
            if f"{source} {lib}" not in copied:
                out.append(f"{label}: {lib} is not copied to the same path in the runtime image")
    if image == "gpu-worker-cpu" and "patchelf --remove-needed libtorch_cuda.so" not in text:
        out.append("the CPU-only binary still needs libtorch_cuda.so (patchelf --remove-needed)")
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
    # target/prebuilt/: the host builds the `prebuilt` stages copy (scripts/build-images.sh).
    out += [f"{p} is left out of the build context" for p in ("target/prebuilt/clothesline-ingress",) if ignored(p, patterns)]
    # Documentation stays out: a README edit must not rebuild the images (`COPY . .`).
    for p in ("target/release/x", ".git/HEAD", "k8s/base/kustomization.yaml", "model/train.py", "rust-toolchain.toml",
              "README.md", "RELIABILITY.md", "model/README.md", "compose.yml", "scripts/test.sh", ".env"):
        if not ignored(p, patterns):
            out.append(f"{p} is sent to the build context")
    return out


def check_images(report: Report, contract: Contract | None) -> None:
    images = image_names()
    tiers = sorted({VARIANTS.get(i, i) for i in images})
    if tiers != sorted(BINARIES):
        report.add("one Dockerfile per tier", [f"docker/ has {tiers}, the tiers are {sorted(BINARIES)}"])
    hadolint = tool("hadolint")
    for path in [ROOT / f"docker/{i}.Dockerfile" for i in images] + sorted((ROOT / "docker/base").glob("*.Dockerfile")):
        lint = run([hadolint, "--no-color", str(path)])
        problems = [ln for ln in (lint.stdout + lint.stderr).splitlines() if ln.strip()]
        if lint.returncode and not problems:
            problems = [f"hadolint exited {lint.returncode}"]
        report.add(f"hadolint {rel(path)}", problems)
    for image in images:
        binary = BINARIES[VARIANTS.get(image, image)]
        report.add(f"docker/{image}.Dockerfile builds, runs and configures {binary}", dockerfile_problems(image, contract))
    report.add(".dockerignore keeps what the build needs, and only that", dockerignore_problems())
    lint = run([tool("shellcheck"), "-x", *[str(ROOT / s) for s in SCRIPTS]], cwd=ROOT)
    report.add(f"shellcheck {' '.join(SCRIPTS)}", [ln for ln in lint.stdout.splitlines() if ln.strip()])
    problems = []
    # build-images.sh builds every image; push-ecr.sh pushes the deployed tiers (not the variants).
    for script, want in (("scripts/build-images.sh", images), ("scripts/push-ecr.sh", sorted(BINARIES))):
        listed = re.search(r"(?:ALL_TIERS|TIERS)=\(([^)]*)\)", (ROOT / script).read_text()).group(1).split()
        if sorted(listed) != want:
            problems.append(f"{script} handles {listed}, want {want}")
    report.add("the image scripts handle every image", problems)


# The users of nats/auth.conf, as their password variables spell them.
NATS_ROLES = ("INGRESS", "PREPROCESSOR", "GPU_WORKER", "PROVISION", "PUBLIC", "BULK")


def check_nats_configs(report: Report, rendered: dict[str, list[dict]]) -> None:
    """`nats-server -t` (parse and check, unknown fields refused) on every NATS config."""
    configs = {name: (ROOT / name).read_text() for name in ("nats/nats-server.conf", "nats/nats-cluster.conf")}
    for overlay, objects in rendered.items():
        if by_kind(objects, "ConfigMap"):
            configs[f"{overlay}: ConfigMap nats-config"] = nats_conf(objects)
    server = tool("nats-server")
    with tempfile.TemporaryDirectory() as tmp:
        # nats-cluster.conf includes ./auth.conf.
        (Path(tmp) / "auth.conf").write_text((ROOT / "nats/auth.conf").read_text())
        for name, text in configs.items():
            path = Path(tmp) / "nats.conf"
            path.write_text(text)
            # The per-role passwords come from the environment (Secret nats-users): placeholders.
            passwords = {f"NATS_PASSWORD_{role}": "check" for role in NATS_ROLES}
            env = {**os.environ, "POD_NAME": "nats-0", "NATS_SERVER_NAME": "nats-1", **passwords}
            out = run([server, "-t", "-c", str(path)], env=env)
            report.add(f"nats-server -t accepts {name}", [] if out.returncode == 0 else [out.stderr.strip()])
