"""The sandboxed workflow runner: ``python -m kici.services.runner --ipc-fd N`` (10 §4-6, 40 §6).

One process per job. It speaks newline-delimited JSON over an inherited socket: ``ready`` ->
``execute`` -> ``step.start`` / ``log.line`` / ``step.complete`` ... -> ``job.complete`` -> exit 0.
The same process evaluates job generators and dynamic values (``execute`` with ``mode: dynamic`` /
``mode: init``, :mod:`kici.services.runner.dynamic`).

Standard library only (D1): the runner starts once per job, inside bwrap, and importing trio, attrs or
cattrs would cost more than the interpreter itself. The one exception is a user's ``async def`` step,
for which trio is imported lazily (``kici.services.runner.units``).
"""
