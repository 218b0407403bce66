"""Webhooks into the orchestrator: verification, ingress decisions, provider normalizers, lock cache.

Modules: ``models`` (WebhookInfo, routing keys, provider types), ``verification`` (HMAC and the
relay verdict), ``sources`` (generic source settings), ``ingress`` (the direct-ingress decision
table), ``normalizers`` (one per provider), ``payload`` (safe reads of webhook JSON),
``lock_cache`` (LRU+TTL of fetched locks) and ``changed_files`` (when to ask a provider for
them). The ports they plug into are in ``kici.domain.providers``.
"""
