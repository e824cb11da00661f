from django.apps import AppConfig


class DepartmentsConfig(AppConfig):
    name = "departments"
    verbose_name = "Departments and people"

    def ready(self) -> None:
        from axes.signals import user_locked_out
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from departments import receivers, schema  # noqa: F401 - registers the OpenAPI extension

        user_login_failed.connect(receivers.on_login_failed, dispatch_uid="departments.login_failed")
        user_logged_in.connect(receivers.on_logged_in, dispatch_uid="departments.logged_in")
        user_locked_out.connect(receivers.on_locked_out, dispatch_uid="departments.locked_out")
