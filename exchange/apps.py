from django.apps import AppConfig


class ExchangeConfig(AppConfig):
    name = "exchange"
    verbose_name = "Exchange: access, data movement and audit"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from catalog.signals import schema_version_published
        from exchange import receivers
        from exchange.records import ckan as ckan_datastore
        from exchange.records.selectors import register_sqlite_functions

        connection_created.connect(register_sqlite_functions, dispatch_uid="exchange.sqlite_functions")
        ckan_datastore.register()
        schema_version_published.connect(receivers.on_schema_version_published_store,
                                         dispatch_uid="exchange.store_evolve")
        schema_version_published.connect(receivers.on_schema_version_published,
                                         dispatch_uid="exchange.grant_fields_lapse")
