"""Typed refusals: every one names the file, says what is wrong and what to do."""

from __future__ import annotations

from pathlib import Path


class LoraRefused(Exception):
    """A LoRA file that Loratlas will not use, with a reason a person can act on."""

    code = "refused"

    def __init__(self, path: str | Path, problem: str, advice: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.advice = advice
        self.details: dict[str, object] = {}  # what was learnt before the refusal (format, family)
        super().__init__(f"{Path(self.path).name}: {problem} {advice}".strip())

    def __reduce__(self):  # pickles whole, so a refusal crosses a process pool intact
        return type(self), (self.path, self.problem, self.advice), {"details": self.details}

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "file": self.path, "problem": self.problem,
                "advice": self.advice, "message": str(self)}


class PickleRefused(LoraRefused):
    code = "pickle"


class NotSafetensors(LoraRefused):
    code = "not-safetensors"


class EmptyFile(LoraRefused):
    code = "empty"


class TruncatedFile(LoraRefused):
    code = "truncated"


class HeaderTooLarge(LoraRefused):
    code = "header-too-large"


class FileTooLarge(LoraRefused):
    code = "too-large"


class NonFiniteTensor(LoraRefused):
    code = "non-finite"


class NotALora(LoraRefused):
    code = "not-a-lora"


class NotAnImageModel(LoraRefused):
    code = "not-image"


class WrongFamily(LoraRefused):
    code = "wrong-family"


class ShapeMismatch(LoraRefused):
    code = "shape-mismatch"


class NoMatchingModules(LoraRefused):
    code = "no-matching-modules"
