from django.urls import path

from catalog import apis

urlpatterns = [
    path("datasets/", apis.DatasetListApi.as_view(), name="dataset-list"),
    path("datasets/<int:dataset_id>/", apis.DatasetDetailApi.as_view(), name="dataset-detail"),
    path("datasets/<int:dataset_id>/schema/", apis.DatasetSchemaApi.as_view(), name="dataset-schema"),
    path("datasets/<int:dataset_id>/schema/versions/", apis.SchemaVersionListApi.as_view(),
         name="dataset-schema-versions"),
    path("datasets/<int:dataset_id>/transitions/", apis.DatasetTransitionApi.as_view(), name="dataset-transition"),
    path("datasets/<int:dataset_id>/timeline/", apis.DatasetTimelineApi.as_view(), name="dataset-timeline"),
    path("search/", apis.SearchApi.as_view(), name="dataset-search"),
    path("review-queue/", apis.ReviewQueueApi.as_view(), name="review-queue"),
]
