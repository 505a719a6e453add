"""Containers for the image tests: podman set up as scripts/build-images.sh
sets it up (CONTAINERS_CONF), and a Kubernetes container spec from the chart
turned into the `podman run` flags that mean the same thing."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .dockerfiles import ROOT

CONTAINERS_CONF = ROOT / "scripts" / "podman" / "containers.conf"
VERSION = next(line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text().splitlines()
               if line.startswith("version = "))
IMAGES = {
    "predictor": f"localhost/musicsplit-predictor:{VERSION}",
    "gateway": f"localhost/musicsplit-gateway:{VERSION}",
    "operator": f"localhost/musicsplit-operator:{VERSION}",
}


def podman(*args: str, check: bool = True, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF))}
    out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=env, input=input)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {out.returncode}\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return out


@dataclass
class Container:
    name: str

    def url(self, port: int) -> str:
        """The host's 127.0.0.1 URL of a published container port."""
        return "http://" + podman("port", self.name, str(port)).stdout.strip().splitlines()[0]

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return out.stdout + out.stderr

    def running(self) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.name, check=False).stdout.strip() == "true"

    def exec(self, *cmd: str) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *cmd, check=False)

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


def security_flags(pod_security: dict, container_security: dict) -> list[str]:
    """The chart's securityContext as podman flags (what a kubelet would enforce)."""
    merged = {**pod_security, **container_security}
    flags = []
    if "runAsUser" in merged:
        flags += ["--user", f"{merged['runAsUser']}:{merged.get('runAsGroup', merged['runAsUser'])}"]
    if merged.get("readOnlyRootFilesystem"):
        # Like Kubernetes: no tmpfs on /run, /tmp, /var/tmp unless a volume is mounted there.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if merged.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    for cap in merged.get("capabilities", {}).get("drop", []):
        flags += ["--cap-drop", cap]
    if "fsGroup" in merged:
        flags += ["--group-add", str(merged["fsGroup"])]
    return flags


def run_container(spec: dict, *, image: str, name: str, network: str, pod_security: dict | None = None,
                  volumes: dict[str, str], args: list[str] | None = None, env: dict[str, str] | None = None,
                  publish: list[int] = ()) -> Container:
    """Start a chart container spec detached: its args (or `args`), its plain env
    values (plus `env`), its securityContext, and its volumeMounts, each volume
    given as a host path or "tmpfs"."""
    flags = ["run", "--detach", "--name", name, "--network", network]
    if network != "host":  # the host's network: no alias, its ports are the host's (nothing to publish)
        flags += ["--network-alias", name]
    flags += security_flags(pod_security or {}, spec.get("securityContext", {}))
    for var in spec.get("env", []):
        if "value" in var:
            flags += ["--env", f"{var['name']}={var['value']}"]
    for key, value in (env or {}).items():
        flags += ["--env", f"{key}={value}"]
    for mount in spec.get("volumeMounts", []):
        source = volumes[mount["name"]]
        if source == "tmpfs":
            flags += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777"]
        else:
            flags += ["--volume", f"{source}:{mount['mountPath']}:{'ro' if mount.get('readOnly') else 'rw'}"]
    for extra_path, source in volumes.items():  # volumes the runtime mounts itself (KServe's /mnt/models)
        if extra_path.startswith("/"):
            flags += ["--volume", f"{source}:{extra_path}:ro"]
    for port in publish:
        flags += ["--publish", f"127.0.0.1::{port}"]
    podman(*flags, image, *(args if args is not None else spec.get("args", [])))
    return Container(name)


def image_size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def host_dir(path: Path, uid: int = 65532) -> str:
    """A host directory the container's user owns (an emptyDir with fsGroup)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, uid)
    return str(path)
