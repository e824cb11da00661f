from django.urls import path

from exchange import apis, audit_apis, grant_history_apis, record_apis

urlpatterns = [
    path("health/", apis.HealthApi.as_view(), name="health"),
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
