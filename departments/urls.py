from django.urls import path

from departments import apis

urlpatterns = [
    path("auth/login/", apis.LoginApi.as_view(), name="auth-login"),
    path("auth/logout/", apis.LogoutApi.as_view(), name="auth-logout"),
    path("auth/tokens/", apis.TokenListApi.as_view(), name="auth-tokens"),
    path("auth/tokens/<str:token_key>/", apis.TokenDetailApi.as_view(), name="auth-token-detail"),
    path("me/", apis.MeApi.as_view(), name="me"),
    path("departments/", apis.DepartmentListApi.as_view(), name="department-list"),
    path("departments/<slug:slug>/", apis.DepartmentDetailApi.as_view(), name="department-detail"),
    path("departments/<slug:slug>/members/", apis.MembershipListApi.as_view(), name="membership-list"),
    path(
        "departments/<slug:slug>/members/<int:membership_id>/",
        apis.MembershipDetailApi.as_view(),
        name="membership-detail",
    ),
    path("inbox/", apis.InboxApi.as_view(), name="inbox"),
    path("inbox/read/", apis.InboxReadApi.as_view(), name="inbox-read"),
    path("city-roles/", apis.CityRoleListApi.as_view(), name="city-role-list"),
    path("city-roles/<int:assignment_id>/", apis.CityRoleDetailApi.as_view(), name="city-role-detail"),
]
