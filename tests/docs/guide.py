"""docs/getting-started.md's shell blocks as commands: lines joined at `\\`,
heredoc bodies attached, pipelines split, and the `# needs: WHAT` marker a
command carries when it cannot run without a real cluster, KServe, a GPU, a
registry or the network."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# What a marker may name; anything else is a typo the test reports.
NEEDS = {
    "kserve": "a KServe controller (InferenceServices get pods)",
    "gpu": "GPU nodes",
    "cluster": "an installed release with running pods",
    "knative": "Knative Serving",
    "registry": "a container engine and a registry",
    "network": "downloads or a cloud bucket",
}
MARKER = re.compile(r"\s+#\s*needs:\s*(\S+)\s*$")
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")
SEPARATORS = {"|", "&&", ";", "&"}


@dataclass
class Command:
    line: int  # 1-based line of the guide where it starts
    text: str  # as written (continuations joined, marker removed), for bash
    heredoc: str | None = None  # the body, when the command has one
    needs: str | None = None
    segments: list[list[str]] = field(default_factory=list)  # pipeline / list parts, as argv

    @property
    def script(self) -> str:
        """The command as bash runs it."""
        if self.heredoc is None:
            return self.text
        tag = HEREDOC.search(self.text).group(1)
        return f"{self.text}\n{self.heredoc}{tag}\n"

    def __str__(self) -> str:
        return f"line {self.line}: {self.text}"


def blocks(markdown: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of each ```sh block."""
    out, current, start = [], None, 0
    for n, line in enumerate(markdown.splitlines(), 1):
        stripped = line.strip()
        if current is None and stripped in ("```sh", "```bash"):
            current, start = [], n + 1
        elif current is not None and stripped == "```":
            out.append((start, current))
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, "an unclosed ```sh block"
    return out


def split(text: str) -> list[list[str]]:
    tokens = shlex.split(text, comments=True)
    segments, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            if current:
                segments.append(current)
            current = []
        else:
            current.append(token)
    if current:
        segments.append(current)
    return segments


def commands(markdown: str) -> list[Command]:
    out = []
    for start, lines in blocks(markdown):
        indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
        lines = [x[indent:] for x in lines]
        i = 0
        while i < len(lines):
            first, text = i, lines[i]
            i += 1
            while text.endswith("\\"):
                text = text[:-1].rstrip() + " " + lines[i].strip()
                i += 1
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            needs = None
            m = MARKER.search(text)
            if m:
                needs, text = m.group(1), text[:m.start()]
            cmd = Command(start + first, text.strip(), needs=needs)
            doc = HEREDOC.search(text)
            if doc:
                body = []
                while lines[i].strip() != doc.group(1):
                    body.append(lines[i] + "\n")
                    i += 1
                i += 1
                cmd.heredoc = "".join(body)
                text = text[:doc.start()]
            cmd.segments = split(text)
            out.append(cmd)
    return out


def guide(path: Path) -> list[Command]:
    return commands(path.read_text())
