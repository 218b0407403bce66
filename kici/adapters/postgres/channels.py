"""The NOTIFY channels the stores signal on, each sent in the transaction that made the work ready.

Payloads are hints, never the work itself: a listener that reconnects re-reads
the tables (catch-up), and PostgreSQL folds identical notifications of one
transaction into one.

* ``kici_job_ready`` (payload: run id): jobs of the run became ready
  (``needs_satisfied`` flipped, or a fan-out wave released a child). The
  orchestrator applies protection gates and enqueues them; catch-up:
  ``ExecutionStore.list_ready_jobs()``.
* ``kici_dispatch`` (payload: job id): a dispatch-queue row became pending
  (enqueue or requeue). The dispatcher dequeues; catch-up: dequeue until empty.
"""

JOB_READY = "kici_job_ready"
DISPATCH = "kici_dispatch"

ALL = (JOB_READY, DISPATCH)
