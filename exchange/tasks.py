"""Every Celery task of the exchange, by package. Celery's autodiscovery looks for
``<app>.tasks``, and ExchangeConfig.ready() imports this module, so that every process (web,
worker, beat) has the whole registry and code can queue a task by its name. A task's name
(``exchange.tasks.<name>``) is part of the contract with the broker and with beat's schedule
rows: it stays when code moves."""

from exchange.access import tasks as access_tasks
from exchange.audit import tasks as audit_tasks
from exchange.objections import tasks as objection_tasks
from exchange.ops import tasks as ops_tasks
from exchange.sync import tasks as sync_tasks

__all__ = ["access_tasks", "audit_tasks", "objection_tasks", "ops_tasks", "sync_tasks"]
