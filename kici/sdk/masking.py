"""Secret masking for every line that leaves a step (SEC-15, D10).

Standard library only: the sandboxed runner masks before anything reaches the IPC channel, and the agent
uses the same class on its side. One compiled alternation, longest value first, so that when two secrets
overlap the longer one wins and no fragment of it survives.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

MASK = "***"
MIN_SECRET_LENGTH = 3


def secret_forms(value: str) -> set[str]:
    """The strings that reveal ``value``: itself, each of its lines, and its base64 encodings.

    Lines are included because output is masked line by line, so a multi-line secret (a PEM key) would
    otherwise never match. Base64 covers the usual accidental leak (``echo $TOKEN | base64``, basic-auth
    headers) in the standard and URL-safe alphabets, padded and unpadded.
    """
    forms = {value}
    forms.update(line for line in value.splitlines() if line.strip())
    raw = value.encode("utf-8", "surrogatepass")
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode("ascii")
        forms.add(text)
        forms.add(text.rstrip("="))
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


class Masker:
    """Replaces every registered secret (and its base64 forms) with ``***``.

    Values shorter than three characters are ignored: masking ``"1"`` or ``"on"`` would shred every log line
    while protecting nothing. ``replace`` swaps the whole set at once (re-registration replaces, SEC-15);
    ``add`` extends it, e.g. for ``ctx.set_secret_output`` values produced mid-job.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.replace(secrets)

    def replace(self, secrets: Iterable[str]) -> None:
        self._values = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            if isinstance(secret, str) and len(secret) >= MIN_SECRET_LENGTH:
                self._values.update(secret_forms(secret))
        self._compile()

    def _compile(self) -> None:
        if not self._values:
            self._pattern = None
            return
        ordered = sorted(self._values, key=lambda v: (-len(v), v))
        self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    @property
    def active(self) -> bool:
        return self._pattern is not None

    def mask(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def mask_value(self, value: object) -> object:
        """Mask every string inside a JSON-like value (outputs, error payloads); other leaves pass through."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {self.mask(str(k)): self.mask_value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.mask_value(v) for v in value]
        return value


__all__ = ["MASK", "MIN_SECRET_LENGTH", "Masker", "secret_forms"]
