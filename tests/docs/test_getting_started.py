"""docs/getting-started.md, followed command by command (tests/docs/guide.py
reads its shell blocks), in order, in a scratch folder holding the repository's
files and whatever the guide itself writes there (my-values.yaml, tenants.yaml):

- `helm install/upgrade/template`: every `--set` and `-f` key must be in the
  chart's values schema; the chart is rendered with Helm's own Go SDK
  (`--reuse-values` reuses the previous install's values), and what
  `helm template` prints goes on down the pipe;
- `kubectl` against the real kube-apiserver of tests/conftest.py: get, explain
  and auth as written; apply for real when it applies only SeparationModels
  (later commands patch them), else as a server-side dry run, as are create,
  patch, annotate, label and delete; a tenants file put in a Secret is first
  loaded as the gateway loads it;
- `musicsplit`: the real CLI's parser, and `model-manifest` runs (on a small
  model dir in the layout the guide downloads); `curl`: the path and method in the
  gateway's OpenAPI; `docker build`: the Dockerfile and its target stage;
  `scripts/build-images.sh`: the script and each flag in its --help;
- plain shell (mkdir, cat > file, printf | sha256sum, python -c, openssl):
  run by bash.

A command marked `# needs: WHAT` is not run (the static checks above still
apply to it) and is listed; any other command the test does not know fails it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.checkpoints import make_model_dir
from tests.docs.guide import NEEDS, Command, guide
from tests.docs.guide import commands as guide_commands

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "getting-started.md"
CHART = ROOT / "charts" / "musicsplit"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
OPENAPI = json.loads((ROOT / "docs" / "openapi.json").read_text())
SHELL = {"mkdir", "cat", "echo", "printf", "sha256sum", "cut", "openssl", "python", "base64"}
KUBECTL_AS_WRITTEN = {"get", "explain", "auth", "api-resources", "version"}
KUBECTL_DRY_RUN = {"create", "patch", "annotate", "label", "delete", "replace", "scale"}
HELM_RENDERS = {"install", "upgrade", "template"}
RUN_HERE = {"model-manifest"}  # musicsplit commands that run here (the rest need the cluster's gateway)
GATEWAY = "http://127.0.0.1:8080"  # the guide's port-forward


def program(segment: list[str]) -> str:
    first = segment[0]
    return "shell" if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", first) else first


def known(cmd: Command) -> str | None:
    """Why the test cannot check an unmarked command, or None when it can."""
    for seg in cmd.segments:
        prog = program(seg)
        if prog == "kubectl":
            verb = kubectl_verb(seg[1:])
            if verb not in KUBECTL_AS_WRITTEN | KUBECTL_DRY_RUN | {"apply"}:
                return f"kubectl {verb} needs running pods: mark it"
        elif prog == "helm":
            if seg[1] not in HELM_RENDERS:
                return f"helm {seg[1]} needs a cluster: mark it"
        elif prog in ("curl", "docker") or prog == "scripts/build-images.sh":
            return f"{prog} reaches out of this machine: mark it"
        elif prog not in SHELL | {"shell", "musicsplit"}:
            return f"the test does not know {prog!r}: teach tests/docs/test_getting_started.py, or mark it"
    return None


# -- helm

def schema_errors(values, schema: dict, path: str = "") -> list[str]:
    """Keys in `values` that the chart's schema does not have."""
    errors = []
    if isinstance(values, dict) and "properties" in schema:
        for key, value in values.items():
            sub = schema["properties"].get(key)
            if sub is None:
                if schema.get("additionalProperties") is False:
                    errors.append(f"{path}{key}")
                continue
            errors += schema_errors(value, sub, f"{path}{key}.")
    elif isinstance(values, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(values):
            errors += schema_errors(item, schema["items"], f"{path.rstrip('.')}[{i}].")
    return errors


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Helm:
    def __init__(self, chart, cwd: Path, kube):
        self.chart, self.cwd, self.kube = chart, cwd, kube
        self.released: dict = {}

    def __call__(self, args: list[str], render: bool) -> str:
        import helm_python as helm

        from tests.charts.conftest import Rendered

        sub, rest = args[0], args[1:]
        positional, files, sets, namespace, reuse, create_ns = [], [], [], "default", False, False
        args = iter(rest)
        for a in args:
            if a in ("-n", "--namespace"):
                namespace = next(args)
            elif a in ("-f", "--values"):
                files.append(next(args))
            elif a in ("--set", "--set-string"):
                sets.append((a, next(args)))
            elif a == "--reuse-values":
                reuse = True
            elif a == "--create-namespace":
                create_ns = True
            elif a.startswith("-"):
                raise AssertionError(f"helm flag {a} is not one the test knows: teach it")
            else:
                positional.append(a)
        assert len(positional) == 2, f"helm {sub} takes a release and a chart, got {positional}"
        release, chart_path = positional
        assert (self.cwd / chart_path).resolve() == CHART.resolve(), f"{chart_path} is not this repository's chart"
        values = copy.deepcopy(self.released) if reuse else {}
        given: list[tuple[str, dict]] = []
        for f in files:
            path = self.cwd / f
            assert path.is_file(), f"-f {f}: no such file (the guide must write it first)"
            given.append((f"-f {f}", yaml.safe_load(path.read_text()) or {}))
        for flag, expr in sets:
            parse = helm.parse_set_string if flag == "--set" else helm.parse_set_string_values
            given.append((f"{flag} {expr}", parse(expr)))
        for what, doc in given:
            missing = schema_errors(doc, SCHEMA)
            assert not missing, f"{what}: {', '.join(missing)} not in charts/musicsplit/values.schema.json"
            values = merge(values, doc)
        if not render:
            return ""
        files_out = self.chart.render(values=values, name=release, namespace=namespace,
                                      is_install=sub != "upgrade", is_upgrade=sub == "upgrade")
        if sub in ("install", "upgrade"):
            self.released = values
            if create_ns or sub == "upgrade":
                self.kube.server.ensure_namespace(namespace)
            return ""
        return yaml.safe_dump_all(Rendered(files_out).objects)


# -- kubectl

def kubectl_verb(args: list[str]) -> str:
    i = 0
    while i < len(args):
        if args[i] in ("-n", "--namespace", "--context", "--kubeconfig"):
            i += 2
        elif args[i].startswith("-"):
            i += 1
        else:
            return args[i]
    return ""


def applied_kinds(args: list[str], stdin: str | None, cwd: Path) -> set[str]:
    kinds, i = set(), 0
    while i < len(args):
        if args[i] in ("-f", "--filename"):
            src = args[i + 1]
            paths = [None] if src == "-" else (sorted((cwd / src).glob("*.yaml")) if (cwd / src).is_dir()
                                                else [cwd / src])
            for p in paths:
                text = stdin if p is None else p.read_text()
                kinds |= {d["kind"] for d in yaml.safe_load_all(text or "") if d}
            i += 2
        else:
            i += 1
    return kinds


def kubectl(kube, args: list[str], stdin: str | None, cwd: Path) -> str:
    verb = kubectl_verb(args)
    for a in args:
        if a.startswith("--from-file=tenants.yaml="):  # the gateway's tenants file: as the gateway reads it
            from musicsplit.gateway.tenancy.tenants import TenantsFileError, load_tenants

            try:
                load_tenants(cwd / a.split("=", 2)[2])
            except TenantsFileError as e:
                raise AssertionError(f"the gateway refuses the guide's tenants file: {e}") from None
    args = [a for a in args if a not in ("-w", "--watch")]
    if verb == "apply" and not any(a.startswith("--dry-run") for a in args):
        if applied_kinds(args, stdin, cwd) != {"SeparationModel"}:
            args.append("--dry-run=server")
    elif verb in KUBECTL_DRY_RUN and not any(a.startswith("--dry-run") for a in args):
        args.append("--dry-run=server")
    p = subprocess.run(["kubectl", "--kubeconfig", str(kube.kubeconfig), *args], input=stdin, cwd=cwd,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"kubectl {' '.join(args)} -> {p.returncode}: {p.stderr.strip()}"
    return p.stdout


# -- the rest

def musicsplit(args: list[str]) -> None:
    from musicsplit.cli import build_parser

    parser = build_parser()
    try:
        parsed, extra = parser.parse_known_args(args)
    except SystemExit:
        raise AssertionError(f"musicsplit {' '.join(args)}: the CLI refuses it (see the usage above)") from None
    assert not extra or getattr(parsed, "passthrough", False), f"musicsplit: unrecognized arguments {extra}"


def run_cli(args: list[str], cwd: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "musicsplit.cli", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, f"musicsplit {' '.join(args)} -> {p.returncode}: {p.stderr.strip()[-800:]}"


def curl(args: list[str]) -> None:
    url = next(a for a in args if a.startswith("http"))
    if not url.startswith(GATEWAY):
        return  # a download from elsewhere
    path = url.removeprefix(GATEWAY) or "/"
    method = "post" if any(a in ("-F", "-d", "--data", "--form") for a in args) else "get"
    for flag, value in zip(args, args[1:]):
        if flag == "-X":
            method = value.lower()
    for template, ops in OPENAPI["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) and method in ops:
            return
    raise AssertionError(f"curl: {method.upper()} {path} is not in the gateway's API (docs/openapi.json)")


def docker(args: list[str], cwd: Path) -> None:
    if args[0] != "build":
        return
    dockerfile = args[args.index("-f") + 1]
    path = cwd / dockerfile
    assert path.is_file(), f"docker build -f {dockerfile}: no such file"
    if "--target" in args:
        target = args[args.index("--target") + 1]
        stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", path.read_text(), re.M | re.I)
        assert target in stages, f"{dockerfile} has no stage {target!r} (it has {stages})"


def build_images(args: list[str], cwd: Path) -> None:
    script = cwd / "scripts" / "build-images.sh"
    assert os.access(script, os.X_OK), "scripts/build-images.sh: no such executable"
    usage = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30).stdout
    for flag in (a for a in args if a.startswith("--")):
        assert flag in usage, f"scripts/build-images.sh has no {flag} (its --help: {usage[:300]})"


def shell(cmd: Command, cwd: Path) -> None:
    p = subprocess.run(["bash", "-eo", "pipefail", "-c", cmd.script], cwd=cwd, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr.strip()[-500:]}"


# -- the tests

def test_the_checks_catch_what_the_guide_could_get_wrong():
    """What each check refuses, so a guide gone stale cannot pass."""
    assert schema_errors({"gateway": {"auth": {"tenants": {"existingSecret": "x"}}}}, SCHEMA) == []
    assert schema_errors({"gateway": {"persistance": {"enabled": True}}}, SCHEMA) == ["gateway.persistance"]
    assert schema_errors({"gateway": {"endpoints": [{"model": "m", "uri": "x"}]}}, SCHEMA) == [
        "gateway.endpoints[0].uri"]
    with pytest.raises(AssertionError, match="unrecognized"):
        musicsplit(["loadtest", "soak", "--url", GATEWAY, "--minutes", "20"])
    with pytest.raises(AssertionError, match="refuses"):
        musicsplit(["loadtest", "sock", "--url", GATEWAY])
    with pytest.raises(AssertionError, match="not in the gateway's API"):
        curl(["curl", f"{GATEWAY}/v1/separation/JOB_ID"])
    with pytest.raises(AssertionError, match="no stage"):
        docker(["build", "-f", "predictor/Dockerfile", "--target", "gpu", "."], ROOT)
    marked = guide_commands("```sh\nkubectl logs deploy/x   # needs: kserve\nkubectl logs deploy/y\n```\n")
    assert [c.needs for c in marked] == ["kserve", None] and "mark it" in known(marked[1])


COMMANDS = guide(GUIDE)


def test_every_command_is_checked_here_or_marked_with_what_it_needs():
    unknown_marks = [f"{c}  (needs: {c.needs})" for c in COMMANDS if c.needs and c.needs not in NEEDS]
    unmarked = [f"{c}  ({why})" for c in COMMANDS if not c.needs and (why := known(c))]
    assert not unknown_marks, "markers naming nothing known:\n" + "\n".join(unknown_marks)
    assert not unmarked, "commands the test cannot run and the guide does not mark:\n" + "\n".join(unmarked)
    marked = [c for c in COMMANDS if c.needs]
    print("\nNot run here (the guide marks what each needs):")
    for c in marked:
        print(f"  [{c.needs}] {c}")
    # The guide's core steps (install, a model, a rollout's controls, tenants) are checked, not marked away.
    checked = " ".join(c.text for c in COMMANDS if not c.needs)
    for step in ("helm install", "helm upgrade", "helm template", "kubectl apply -f -", "model-manifest",
                 "musicsplit.io/action=abort", '"finalizers":null', "create secret generic"):
        assert step in checked, f"no command checked here does {step!r}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The repository's folders, linked, in a folder the guide's commands may write to
    (the files it writes, my-values.yaml, tenants.yaml, models/, land there, never in
    the checkout)."""
    d = tmp_path_factory.mktemp("reader")
    for entry in ROOT.iterdir():
        if (entry.is_dir() and entry.name not in (".git", ".venv", "models", "out")) or entry.name == "pyproject.toml":
            (d / entry.name).symlink_to(entry)
    return d


@pytest.mark.slow
def test_the_guide_runs_against_a_real_api_server_chart_and_cli(kube, workdir):
    import helm_python as helm

    from musicsplit.localstack import wait_until

    # kube-apiserver publishes a new CRD's OpenAPI (what `kubectl explain` reads) a
    # moment after serving it; a cluster the reader installed KServe on long ago has it.
    wait_until(lambda: kube.kubectl("explain", "inferenceservice", check=False).returncode == 0, 60,
               "InferenceService in the API server's OpenAPI", interval=0.5)
    # What the guide downloads (marked `network`): a small model dir in the same
    # (Hugging Face) layout, made with Demucs' own classes, so `musicsplit
    # model-manifest` really runs on it.
    make_model_dir(workdir / "models" / "htdemucs", "htdemucs", layout="hf", manifest=False)
    failures = []
    with helm.Chart.load(CHART) as chart:
        run_helm = Helm(chart, workdir, kube)
        for cmd in COMMANDS:
            try:
                run(cmd, run_helm, kube, workdir)
            except AssertionError as e:
                failures.append(f"{cmd}\n    -> {e}")
    assert not failures, f"{len(failures)} of the guide's commands fail:\n" + "\n".join(failures)


def run(cmd: Command, run_helm: Helm, kube, cwd: Path) -> None:
    progs = {program(s) for s in cmd.segments}
    if progs <= SHELL | {"shell"}:
        if not cmd.needs:
            shell(cmd, cwd)
        return
    stdin = cmd.heredoc
    for seg in cmd.segments:
        prog, args = program(seg), seg[1:]
        if prog == "helm" and args[0] in HELM_RENDERS:
            stdin = run_helm(args, render=not cmd.needs)
        elif prog == "musicsplit":
            musicsplit(args)
            if args[0] in RUN_HERE and not cmd.needs:
                run_cli(args, cwd)
        elif prog == "curl":
            curl(args)
        elif prog == "docker":
            docker(args, cwd)
        elif prog == "scripts/build-images.sh":
            build_images(args, cwd)
        elif prog == "kubectl" and not cmd.needs:
            stdin = kubectl(kube, args, stdin, cwd)
