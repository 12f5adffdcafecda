"""One AWS request as data: what `deploy` and `deploy delete` will send (and `--dry-run` prints),
shared by the SageMaker deployment and its auto scaling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Request:
    service: str  # "s3" | "sagemaker"
    operation: str  # boto3 method name
    params: dict[str, Any]
    note: str = ""

    def render(self) -> str:
        shown = {k: ("<model.tar.gz bytes>" if k == "Body" else v) for k, v in self.params.items()}
        return f"{self.service}.{self.operation}({shown})" + (
            f"  # {self.note}" if self.note else ""
        )
