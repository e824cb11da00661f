from django.urls import path

from exchange.ops import apis
from exchange.oversight import apis as audit_apis
from exchange.oversight import history_apis as grant_history_apis
from exchange.overview import apis as overview_apis
from exchange.records import apis as record_apis

urlpatterns = [
    path("health/", apis.HealthApi.as_view(), name="health"),
    path("city/", overview_apis.CityMapApi.as_view(), name="city-map"),
    path("datasets/<int:dataset_id>/records/", record_apis.RecordListApi.as_view(), name="dataset-records"),
    path("datasets/<int:dataset_id>/export/", record_apis.RecordExportApi.as_view(), name="dataset-export"),
    path("datasets/<int:dataset_id>/preview/", record_apis.RecordPreviewApi.as_view(), name="dataset-preview"),
    path("audit/events/", audit_apis.AuditEventListApi.as_view(), name="audit-event-list"),
    path("audit/events/export/", audit_apis.AuditEventExportApi.as_view(), name="audit-event-export"),
    path("audit/reports/user/<str:username>/", audit_apis.AuditUserReportApi.as_view(), name="audit-report-user"),
    path(
        "audit/reports/department/<slug:slug>/",
        audit_apis.AuditDepartmentReportApi.as_view(),
        name="audit-report-department",
    ),
    path("audit/verify/", audit_apis.AuditVerifyApi.as_view(), name="audit-verify"),
    path("audit/datasets/<int:dataset_id>/who-could-see/", grant_history_apis.WhoCouldSeeApi.as_view(),
         name="audit-who-could-see"),
    path("audit/datasets/<int:dataset_id>/grant-timeline/", grant_history_apis.GrantTimelineApi.as_view(),
         name="audit-grant-timeline"),
]

from exchange.sync import apis as sync_apis  # noqa: E402

urlpatterns += [
    path("sync/connections/", sync_apis.ConnectionListApi.as_view(), name="sync-connections"),
    path("sync/connections/<int:connection_id>/", sync_apis.ConnectionDetailApi.as_view(), name="sync-connection"),
    path("sync/connections/<int:connection_id>/test/", sync_apis.ConnectionTestApi.as_view(),
         name="sync-connection-test"),
    path("datasets/<int:dataset_id>/source/", sync_apis.SourceApi.as_view(), name="dataset-source"),
    path("datasets/<int:dataset_id>/source/upload/", sync_apis.SourceUploadApi.as_view(),
         name="dataset-source-upload"),
    path("datasets/<int:dataset_id>/source/run/", sync_apis.SourceRunApi.as_view(), name="dataset-source-run"),
    path("sync/runs/", sync_apis.RunListApi.as_view(), name="sync-runs"),
    path("sync/runs/<int:run_id>/", sync_apis.RunDetailApi.as_view(), name="sync-run"),
    path("sync/runs/<int:run_id>/cancel/", sync_apis.RunCancelApi.as_view(), name="sync-run-cancel"),
    path("sync/runs/<int:run_id>/quarantine/", sync_apis.RunQuarantineApi.as_view(), name="sync-run-quarantine"),
    path("sync/subscriptions/", sync_apis.SubscriptionListApi.as_view(), name="sync-subscriptions"),
    path("sync/subscriptions/<int:subscription_id>/", sync_apis.SubscriptionDetailApi.as_view(),
         name="sync-subscription"),
    path("sync/subscriptions/<int:subscription_id>/run/", sync_apis.SubscriptionRunApi.as_view(),
         name="sync-subscription-run"),
    path("sync/subscriptions/<int:subscription_id>/end/", sync_apis.SubscriptionEndApi.as_view(),
         name="sync-subscription-end"),
    path("sync/subscriptions/<int:subscription_id>/purge/", sync_apis.SubscriptionPurgeApi.as_view(),
         name="sync-subscription-purge"),
]

from exchange.access import apis as access_apis  # noqa: E402

urlpatterns += [
    path("access-requests/", access_apis.AccessRequestListApi.as_view(), name="access-request-list"),
    path("access-requests/<int:request_id>/", access_apis.AccessRequestDetailApi.as_view(),
         name="access-request-detail"),
    path("access-requests/<int:request_id>/withdraw/", access_apis.AccessRequestWithdrawApi.as_view(),
         name="access-request-withdraw"),
    path("access-requests/<int:request_id>/comments/", access_apis.AccessRequestCommentApi.as_view(),
         name="access-request-comment"),
    path("access-requests/<int:request_id>/decide/", access_apis.AccessRequestDecideApi.as_view(),
         name="access-request-decide"),
    path("access-requests/<int:request_id>/form-defaults/", access_apis.AccessRequestFormDefaultsApi.as_view(),
         name="access-request-form-defaults"),
    path("access/pending/", access_apis.AccessPendingApi.as_view(), name="access-pending"),
    path("grants/", access_apis.GrantListApi.as_view(), name="grant-list"),
    path("grants/<int:grant_id>/", access_apis.GrantDetailApi.as_view(), name="grant-detail"),
    path("grants/<int:grant_id>/dpo-approve/", access_apis.GrantDpoApproveApi.as_view(), name="grant-dpo-approve"),
    path("grants/<int:grant_id>/dpo-reject/", access_apis.GrantDpoRejectApi.as_view(), name="grant-dpo-reject"),
    path("grants/<int:grant_id>/revoke/", access_apis.GrantRevokeApi.as_view(), name="grant-revoke"),
    path("grants/<int:grant_id>/certify/", access_apis.GrantCertifyApi.as_view(), name="grant-certify"),
    path("datasets/<int:dataset_id>/access/explain/", access_apis.AccessExplainApi.as_view(),
         name="dataset-access-explain"),
]

from exchange.demand import apis as demand_apis  # noqa: E402

urlpatterns += [
    path("data-requests/", demand_apis.DataRequestListApi.as_view(), name="data-request-list"),
    path("data-requests/<int:data_request_id>/", demand_apis.DataRequestDetailApi.as_view(),
         name="data-request-detail"),
    path("data-requests/<int:data_request_id>/route/", demand_apis.DataRequestRouteApi.as_view(),
         name="data-request-route"),
    path("data-requests/<int:data_request_id>/duplicate/", demand_apis.DataRequestDuplicateApi.as_view(),
         name="data-request-duplicate"),
    path("data-requests/<int:data_request_id>/accept/", demand_apis.DataRequestAcceptApi.as_view(),
         name="data-request-accept"),
    path("data-requests/<int:data_request_id>/decline/", demand_apis.DataRequestDeclineApi.as_view(),
         name="data-request-decline"),
    path("data-requests/<int:data_request_id>/fulfil/", demand_apis.DataRequestFulfilApi.as_view(),
         name="data-request-fulfil"),
    path("data-requests/<int:data_request_id>/withdraw/", demand_apis.DataRequestWithdrawApi.as_view(),
         name="data-request-withdraw"),
    path("data-requests/<int:data_request_id>/join/", demand_apis.DataRequestJoinApi.as_view(),
         name="data-request-join"),
    path("data-requests/<int:data_request_id>/leave/", demand_apis.DataRequestLeaveApi.as_view(),
         name="data-request-leave"),
]

from exchange.objections import apis as objection_apis  # noqa: E402

urlpatterns += [
    path("objections/", objection_apis.ObjectionListApi.as_view(), name="objection-list"),
    path("objections/<int:objection_id>/", objection_apis.ObjectionDetailApi.as_view(), name="objection-detail"),
    path("objections/<int:objection_id>/accept/", objection_apis.ObjectionAcceptApi.as_view(),
         name="objection-accept"),
    path("objections/<int:objection_id>/reject/", objection_apis.ObjectionRejectApi.as_view(),
         name="objection-reject"),
    path("objections/<int:objection_id>/withdraw/", objection_apis.ObjectionWithdrawApi.as_view(),
         name="objection-withdraw"),
]
