from django.urls import path

from exchange import apis, record_apis

urlpatterns = [
    path("health/", apis.HealthApi.as_view(), name="health"),
    path("datasets/<int:dataset_id>/records/", record_apis.RecordListApi.as_view(), name="dataset-records"),
    path("datasets/<int:dataset_id>/export/", record_apis.RecordExportApi.as_view(), name="dataset-export"),
    path("datasets/<int:dataset_id>/preview/", record_apis.RecordPreviewApi.as_view(), name="dataset-preview"),
]
