"""The PostgreSQL adapter: embedded server, pool, LISTEN/NOTIFY, migrations and the orchestrator's stores.

psycopg has no trio support, so every query runs on a sync ``psycopg_pool``
connection in a worker thread (:mod:`.database`), and notifications are read on
one dedicated connection whose socket trio waits on (:mod:`.listener`).
"""
