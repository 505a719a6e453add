"""The component Dockerfiles, parsed by dockerfile-parse into stages, with the
instructions a target image ends up with (its own, then its base stage's)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
# component -> (Dockerfile, the targets users build, the folder it owns)
IMAGES = {
    "predictor": (ROOT / "predictor" / "Dockerfile", ["cpu", "cuda"], "predictor"),
    "gateway": (ROOT / "gateway" / "Dockerfile", [None], "gateway"),
    "operator": (ROOT / "operator" / "Dockerfile", [None], "operator"),
}
SHARED_SOURCES = {"pyproject.toml", "setup.py", "README.md", "musicsplit"}


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[dict] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == instruction]


class Dockerfile:
    def __init__(self, path: Path):
        self.path = path
        self.parser = DockerfileParser(path=str(path))
        self.stages: list[Stage] = []
        for ins in self.parser.structure:
            if ins["instruction"] == "FROM":
                words = ins["value"].split()
                name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
                self.stages.append(Stage(name, words[0]))
            elif self.stages and ins["instruction"] != "COMMENT":
                self.stages[-1].instructions.append(ins)

    @property
    def comments(self) -> list[str]:
        return [i["value"] for i in self.parser.structure if i["instruction"] == "COMMENT"]

    def stage(self, target: str | None) -> Stage:
        """The stage `docker build --target` picks (the last one when None)."""
        return self.stages[-1] if target is None else next(s for s in self.stages if s.name == target)

    def chain(self, target: str | None) -> list[Stage]:
        """The target stage and the stages it is built FROM, nearest first."""
        names = {s.name: s for s in self.stages if s.name}
        out = [self.stage(target)]
        while out[-1].base in names:
            out.append(names[out[-1].base])
        return out

    def effective(self, target: str | None, instruction: str) -> str | None:
        """The value the image ends up with (the last one set along its chain)."""
        for stage in self.chain(target):
            values = stage.all(instruction)
            if values:
                return values[-1]
        return None

    def env(self, target: str | None) -> dict[str, str]:
        out = {}
        for stage in reversed(self.chain(target)):
            for value in stage.all("ENV"):
                for pair in shlex.split(value.replace("\\\n", " ")):
                    key, _, val = pair.partition("=")
                    out[key] = val
        return out

    def external_bases(self) -> list[str]:
        names = {s.name for s in self.stages if s.name}
        return [s.base for s in self.stages if s.base not in names]

    def copies(self) -> list[tuple[list[str], str, bool]]:
        """Every COPY/ADD: (sources, destination, from another stage)."""
        return [copy for stage in self.stages for copy in self.copies_of(stage)]

    @staticmethod
    def copies_of(stage: Stage) -> list[tuple[list[str], str, bool]]:
        """A stage's COPY/ADD instructions: (sources, destination, from another stage)."""
        out = []
        for ins in stage.instructions:
            if ins["instruction"] in ("COPY", "ADD"):
                words = shlex.split(ins["value"])
                flags = [w for w in words if w.startswith("--")]
                paths = [w for w in words if not w.startswith("--")]
                out.append((paths[:-1], paths[-1], any(f.startswith("--from") for f in flags)))
        return out


def exec_form(value: str | None) -> list[str]:
    """An instruction's exec form (JSON array), e.g. ENTRYPOINT ["musicsplit"]."""
    assert value and value.startswith("["), f"use the exec form: {value}"
    return json.loads(value)
