from django.apps import AppConfig


class ExchangeConfig(AppConfig):
    name = "exchange"
    verbose_name = "Exchange: access, data movement and audit"

    def ready(self) -> None:
        """The wiring between packages that must not import each other: a lower package sends
        a signal, the higher one that reacts is connected here."""
        from django.db.backends.signals import connection_created

        from catalog.signals import schema_version_published
        from exchange import tasks  # noqa: F401  (registers every task in every process)
        from exchange.access import receivers as access_receivers
        from exchange.access.signals import grant_changing, grant_narrowed
        from exchange.records import ckan as ckan_datastore
        from exchange.records import receivers as records_receivers
        from exchange.records.selectors import register_sqlite_functions
        from exchange.sync import receivers as sync_receivers
        from exchange.sync.quality import register_sqlite_functions as register_quality_functions

        connection_created.connect(register_sqlite_functions, dispatch_uid="exchange.sqlite_functions")
        connection_created.connect(register_quality_functions, dispatch_uid="exchange.sqlite_quality_functions")
        ckan_datastore.register()
        schema_version_published.connect(records_receivers.on_schema_version_published_store,
                                         dispatch_uid="exchange.store_evolve")
        schema_version_published.connect(access_receivers.on_schema_version_published,
                                         dispatch_uid="exchange.grant_fields_lapse")
        grant_changing.connect(sync_receivers.on_grant_changing, dispatch_uid="exchange.sync.lock_for_grant")
        grant_narrowed.connect(sync_receivers.on_grant_narrowed, dispatch_uid="exchange.sync.end_for_grant")
