from django.urls import path

from exchange import apis, audit_apis

urlpatterns = [
    path("health/", apis.HealthApi.as_view(), name="health"),
    path("audit/events/", audit_apis.AuditEventListApi.as_view(), name="audit-event-list"),
    path("audit/events/export/", audit_apis.AuditEventExportApi.as_view(), name="audit-event-export"),
    path("audit/reports/user/<str:username>/", audit_apis.AuditUserReportApi.as_view(), name="audit-report-user"),
    path(
        "audit/reports/department/<slug:slug>/",
        audit_apis.AuditDepartmentReportApi.as_view(),
        name="audit-report-department",
    ),
    path("audit/verify/", audit_apis.AuditVerifyApi.as_view(), name="audit-verify"),
]
