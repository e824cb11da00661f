from django.apps import AppConfig


class ExchangeConfig(AppConfig):
    name = "exchange"
    verbose_name = "Exchange: access, data movement and audit"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from exchange.records import register_sqlite_functions

        connection_created.connect(register_sqlite_functions, dispatch_uid="exchange.sqlite_functions")
