from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from catalog import views as catalog_views
from departments import views as department_views
from exchange.access import views as access_views
from exchange.demand import views as demand_views
from exchange.objections import views as objection_views
from exchange.ops.apis import HealthApi
from exchange.oversight import views as oversight_views
from exchange.overview import views as overview_views
from exchange.records import views as records_views
from exchange.sync import views as sync_views

api_v1: list[URLPattern | URLResolver] = [
    path("", include("departments.urls")),
    path("", include("catalog.urls")),
    path("", include("exchange.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
]

urlpatterns = [
    # The API first: programs call it far more often than people open pages, and Django tries
    # the patterns in order (no page's path starts with api/).
    path("api/v1/", include(api_v1)),
    # CKAN serves its action API at both; clients such as ckanapi use the unversioned one.
    path("api/3/action/", include("catalog.ckan_urls")),
    path("api/action/", include("catalog.ckan_urls")),
    path("", department_views.home, name="home"),
    path("healthz", HealthApi.as_view(), name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("inbox/", department_views.inbox, name="ui-inbox"),
    path("departments/", department_views.department_list, name="ui-department-list"),
    path("departments/<slug:slug>/", department_views.department_detail, name="ui-department-detail"),
    path("departments/<slug:slug>/edit/", department_views.department_edit, name="ui-department-edit"),
    path("departments/<slug:slug>/members/add/", department_views.department_member_add, name="ui-member-add"),
    path("departments/<slug:slug>/members/<int:membership_id>/role/", department_views.department_member_role,
         name="ui-member-role"),
    path("departments/<slug:slug>/members/<int:membership_id>/remove/", department_views.department_member_remove,
         name="ui-member-remove"),
    path("city-roles/", department_views.city_roles, name="ui-city-roles"),
    path("city-roles/<int:assignment_id>/revoke/", department_views.city_role_revoke, name="ui-city-role-revoke"),
    path("account/", department_views.account, name="ui-account"),
    path("account/tokens/", department_views.account_token_issue, name="ui-token-issue"),
    path("account/tokens/<str:token_key>/revoke/", department_views.account_token_revoke, name="ui-token-revoke"),
    path("catalogue/", catalog_views.catalogue, name="ui-catalogue"),
    path("datasets/new/", catalog_views.dataset_create, name="ui-dataset-create"),
    path("datasets/<int:dataset_id>/", overview_views.dataset_detail, name="ui-dataset-detail"),
    path("datasets/<int:dataset_id>/edit/", catalog_views.dataset_edit, name="ui-dataset-edit"),
    path("datasets/<int:dataset_id>/schema/", catalog_views.dataset_schema, name="ui-dataset-schema"),
    path("datasets/<int:dataset_id>/delete/", catalog_views.dataset_delete, name="ui-dataset-delete"),
    path("datasets/<int:dataset_id>/transition/", catalog_views.dataset_transition, name="ui-dataset-transition"),
    path("review/", catalog_views.review_queue, name="ui-review-queue"),
    path("review/<int:dataset_id>/", catalog_views.review_detail, name="ui-review-detail"),
    path("datasets/<int:dataset_id>/records/", records_views.dataset_records, name="ui-dataset-records"),
    path("datasets/<int:dataset_id>/sync/", sync_views.dataset_sync, name="ui-dataset-sync"),
    path("datasets/<int:dataset_id>/sync/run/", sync_views.dataset_sync_run, name="ui-dataset-sync-run"),
    path("datasets/<int:dataset_id>/sync/upload/", sync_views.dataset_sync_upload, name="ui-dataset-sync-upload"),
    path("datasets/<int:dataset_id>/sync/source/", sync_views.source_edit, name="ui-dataset-source"),
    path("datasets/<int:dataset_id>/sync/schedule/", sync_views.dataset_sync_schedule,
         name="ui-dataset-sync-schedule"),
    path("datasets/<int:dataset_id>/sync/source/remove/", sync_views.source_remove, name="ui-dataset-source-remove"),
    path("sync/", sync_views.sync_home, name="ui-sync"),
    path("sync/connections/new/", sync_views.connection_create, name="ui-connection-create"),
    path("sync/connections/<int:connection_id>/", sync_views.connection_detail, name="ui-connection"),
    path("sync/connections/<int:connection_id>/test/", sync_views.connection_test, name="ui-connection-test"),
    path("sync/connections/<int:connection_id>/delete/", sync_views.connection_delete, name="ui-connection-delete"),
    path("sync/subscriptions/new/", sync_views.subscription_create, name="ui-subscription-create"),
    path("sync/subscriptions/<int:subscription_id>/", sync_views.subscription_detail, name="ui-subscription"),
    path("sync/subscriptions/<int:subscription_id>/schedule/", sync_views.subscription_schedule,
         name="ui-subscription-schedule"),
    path("sync/subscriptions/<int:subscription_id>/pause/", sync_views.subscription_pause,
         name="ui-subscription-pause"),
    path("sync/subscriptions/<int:subscription_id>/run/", sync_views.subscription_run, name="ui-subscription-run"),
    path("sync/subscriptions/<int:subscription_id>/end/", sync_views.subscription_end, name="ui-subscription-end"),
    path("sync/subscriptions/<int:subscription_id>/purge/", sync_views.subscription_purge,
         name="ui-subscription-purge"),
    path("sync/subscriptions/<int:subscription_id>/remove/", sync_views.subscription_remove,
         name="ui-subscription-remove"),
    path("sync/runs/<int:run_id>/", sync_views.run_detail, name="ui-run-detail"),
    path("sync/runs/<int:run_id>/cancel/", sync_views.run_cancel, name="ui-run-cancel"),
    path("datasets/<int:dataset_id>/request-access/", access_views.request_access, name="ui-request-access"),
    path("datasets/<int:dataset_id>/access/explain/", access_views.access_explain, name="ui-access-explain"),
    path("access/", access_views.access_home, name="ui-access"),
    path("access/requests/", access_views.access_requests, name="ui-access-requests"),
    path("access/requests/<int:request_id>/", access_views.access_request_detail, name="ui-access-request"),
    path("access/requests/<int:request_id>/withdraw/", access_views.access_request_withdraw,
         name="ui-access-request-withdraw"),
    path("access/requests/<int:request_id>/decide/", access_views.access_request_decide,
         name="ui-access-request-decide"),
    path("access/grants/", access_views.my_grants, name="ui-my-grants"),
    path("access/grants/department/", access_views.department_grants, name="ui-department-grants"),
    path("access/grants/<int:grant_id>/<slug:action>/", access_views.grant_action, name="ui-grant-action"),
    path("access/dpo/", access_views.dpo_queue, name="ui-dpo-queue"),
    path("requested-data/", demand_views.data_requests, name="ui-data-requests"),
    path("requested-data/new/", demand_views.data_request_create, name="ui-data-request-create"),
    path("requested-data/<int:data_request_id>/", demand_views.data_request_detail, name="ui-data-request"),
    path("requested-data/<int:data_request_id>/request-access/", demand_views.data_request_access,
         name="ui-data-request-access"),
    path("requested-data/<int:data_request_id>/<slug:step>/", demand_views.data_request_step,
         name="ui-data-request-step"),
    path("objections/", objection_views.objections, name="ui-objections"),
    path("objections/<int:objection_id>/", objection_views.objection_detail, name="ui-objection"),
    path("objections/<int:objection_id>/<slug:step>/", objection_views.objection_step, name="ui-objection-step"),
    path("datasets/<int:dataset_id>/object/", objection_views.objection_create, name="ui-objection-create"),
    path("audit/", oversight_views.audit_explorer, name="ui-audit"),
    path("audit/datasets/<int:dataset_id>/timeline/", oversight_views.audit_timeline, name="ui-audit-timeline"),
    path("audit/who-could-see/", oversight_views.audit_who_could_see, name="ui-audit-who-could-see"),
    path("audit/verify/", oversight_views.audit_verify_page, name="ui-audit-verify"),
    path("dashboard/", overview_views.dashboard, name="ui-dashboard"),
    path("city/", overview_views.city, name="ui-city"),
    path("dashboard/data/requests.json", overview_views.dashboard_requests, name="ui-dashboard-requests"),
    path("dashboard/data/grants.json", overview_views.dashboard_grants, name="ui-dashboard-grants"),
    path("dashboard/data/sync.json", overview_views.dashboard_sync, name="ui-dashboard-sync"),
    path("dashboard/data/audit.json", overview_views.dashboard_audit, name="ui-dashboard-audit"),
    path("admin/", admin.site.urls),
    path("", include("catalog.dcat_urls")),
]

handler400 = "departments.views.error_400"
handler403 = "departments.views.error_403"
handler404 = "departments.views.error_404"
handler500 = "departments.views.error_500"
