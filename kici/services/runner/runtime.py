"""Job-wide runner state and the per-unit ``StepRuntime`` behind every ``StepContext``.

``JobState`` is created once per job: the IPC channel, the masked log router, env store, outputs,
cancellation control. ``UnitRuntime`` is what one step attempt or hook sees through ``ctx``: its own
cancel token, its step index for log attribution, its ``$KICI_ENV``/``$KICI_PATH`` files.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kici.sdk.context import ShellResult
from kici.sdk.errors import KiciUsageError, ShellError
from kici.sdk.masking import Masker
from kici.services.runner.cancel import CancelToken, JobControl
from kici.services.runner.capture import LogRouter
from kici.services.runner.envstore import JobEnv
from kici.services.runner.ipc import Channel
from kici.services.runner.outputs import OutputStore
from kici.services.runner.shell import ProcessTracker, ShellTimeoutError, run_process

MAX_SECRET_OUTPUTS = 20
MAX_SECRET_OUTPUT_BYTES = 64 * 1024
API_RESPONSE_TIMEOUT_S = 15.0


class Requests:
    """Runner -> parent requests that expect an answer (``event.emit``, ``agent.api.request``)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}

    def call(self, message: dict[str, Any], timeout_s: float = API_RESPONSE_TIMEOUT_S) -> dict[str, Any]:
        request_id = f"r{next(self._ids)}"
        done = threading.Event()
        box: list[dict[str, Any]] = []
        with self._lock:
            self._waiting[request_id] = (done, box)
        self._channel.send({**message, "requestId": request_id})
        try:
            if not done.wait(timeout_s):
                raise TimeoutError(f"no answer to {message['type']} within {timeout_s:g}s")
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)
        return box[0]

    def resolve(self, message: dict[str, Any]) -> None:
        request_id = message.get("requestId")
        with self._lock:
            waiting = self._waiting.get(request_id) if isinstance(request_id, str) else None
        if waiting is not None:
            waiting[1].append(message)
            waiting[0].set()


@dataclass
class JobState:
    channel: Channel
    router: LogRouter
    masker: Masker
    env: JobEnv
    outputs: OutputStore
    control: JobControl
    tracker: ProcessTracker
    requests: Requests
    workspace: Path
    scratch: Path
    secrets: Mapping[str, str]
    secret_outputs: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(message)


class UnitRuntime:
    """The ``StepRuntime`` of one unit (see ``kici.sdk.context.StepRuntime``)."""

    def __init__(self, job: JobState, index: int, token: CancelToken, env_files: tuple[Path, Path]) -> None:
        self.job = job
        self.index = index
        self.token = token
        self.env_files = env_files
        self.accessed: set[str] = set()

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled

    def _env(self) -> dict[str, str]:
        env = self.job.env.snapshot()
        env["KICI_ENV"] = str(self.env_files[0])
        env["KICI_PATH"] = str(self.env_files[1])
        return env

    def run_shell(
        self,
        argv: Sequence[str],
        *,
        display: str,
        cwd: str | None,
        env: Mapping[str, str] | None,
        input: str | bytes | None,
        timeout: float | None,
        quiet: bool,
    ) -> ShellResult:
        full_env = self._env()
        if env:
            full_env.update({str(k): str(v) for k, v in env.items()})
        directory = str(self.job.workspace / cwd) if cwd is not None else str(self.job.workspace)
        on_line = None if quiet else (lambda line: self.job.router.emit(self.index, line))
        try:
            return run_process(
                argv,
                cwd=directory,
                env=full_env,
                input=input,
                timeout_s=timeout,
                on_line=on_line,
                token=self.token,
                tracker=self.job.tracker,
            )
        except ShellTimeoutError as exc:
            result = exc.result
            raise ShellError(
                display, result.exit_code, result.stdout, result.stderr, timeout_s=exc.timeout_s
            ) from None

    def log(self, text: str) -> None:
        self.job.router.emit_text(self.index, text)

    def env_snapshot(self) -> Mapping[str, str]:
        return self._env()

    def set_env(self, key: str, value: str) -> None:
        self.job.env.set(key, value)

    def add_path(self, directory: str) -> None:
        self.job.env.add_path(directory)

    def outputs_of(self, step_or_fn: Any) -> Mapping[str, Any]:
        return self.job.outputs.outputs_of(step_or_fn)

    def job_outputs(self, job: Any) -> Any:
        return self.job.outputs.job_outputs(job)

    def set_secret_output(self, key: str, value: str) -> None:
        if len(value.encode("utf-8")) > MAX_SECRET_OUTPUT_BYTES:
            raise KiciUsageError(f"secret output '{key}' exceeds {MAX_SECRET_OUTPUT_BYTES} bytes")
        with self.job.lock:
            if key not in self.job.secret_outputs and len(self.job.secret_outputs) >= MAX_SECRET_OUTPUTS:
                raise KiciUsageError(f"a job may set at most {MAX_SECRET_OUTPUTS} secret outputs")
            self.job.secret_outputs[key] = value
        self.job.masker.add([value])

    def secret_accessed(self, key: str) -> None:
        self.accessed.add(key)

    def emit(self, name: str, payload: Any, target_repos: Sequence[str] | None) -> Any:
        message: dict[str, Any] = {"type": "event.emit", "eventName": name, "payload": payload}
        if target_repos:
            message["target"] = {"repos": list(target_repos)}
        answer = self.job.requests.call(message)
        if answer.get("error"):
            raise KiciUsageError(f"ctx.emit('{name}') failed: {answer['error']}")
        return answer.get("deliveryId")


__all__ = ["JobState", "Requests", "UnitRuntime"]
