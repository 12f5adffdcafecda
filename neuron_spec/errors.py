"""Typed errors. Library code raises these; only the CLI turns them into text and exit codes."""

from __future__ import annotations

from dataclasses import dataclass


class NeuronSpecError(Exception):
    """Base class of every error neuron-spec raises on purpose."""

    exit_code = 1


@dataclass(frozen=True)
class ConfigProblem:
    """One problem found in a config file, located as precisely as the YAML allows."""

    path: str  # dotted field path, "" for the document itself
    message: str  # what was observed and what is allowed
    fix: str = ""
    file: str | None = None
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    @property
    def location(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def render(self) -> str:
        head = f"{self.path} ({self.location})" if self.path else self.location
        text = f"{head}: {self.message}"
        if self.fix:
            text += f" Fix: {self.fix}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "message": self.message,
            "fix": self.fix,
            "file": self.file,
            "line": self.line,
            "column": self.column,
        }


class ConfigError(NeuronSpecError):
    """A config file could not be read or does not describe a valid deployment.

    Carries every problem found, not just the first.
    """

    exit_code = 2

    def __init__(self, problems: list[ConfigProblem]):
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the config"
        super().__init__(head + ":\n" + "\n".join("  " + p.render() for p in self.problems))


class UsageError(NeuronSpecError):
    """Bad command-line input that argparse itself cannot catch."""

    exit_code = 2


class PreflightError(NeuronSpecError):
    """The preflight found errors; raised by callers that must not go on (load, serve)."""

    exit_code = 1

    def __init__(self, report: object, message: str | None = None):
        self.report = report
        super().__init__(
            message or "preflight found errors; run `neuron-spec validate` to see them"
        )


class BackendUnavailableError(NeuronSpecError):
    """A backend's libraries are not installed here (torch, transformers, transformers-neuronx)."""

    exit_code = 2


class GenerationError(NeuronSpecError):
    """Generation failed after the models were loaded."""

    exit_code = 1
