"""Server-rendered pages for departments and the signed-in user's home."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from config.api.errors import NotFoundError
from departments import selectors
from departments.notifications import inbox as inbox_items
from departments.notifications import notification_mark_read


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", {"memberships": selectors.user_memberships(user=request.user)})


@login_required
def department_list(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("q", "")[:100]
    return render(
        request, "departments/list.html",
        {"departments": selectors.department_list(user=request.user, search=search), "q": search},
    )


@login_required
def department_detail(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        department = selectors.department_get(user=request.user, slug=slug)
    except NotFoundError:
        return error_404(request, None)
    members = None
    if selectors.can_view_members(user=request.user, department=department):
        members = selectors.membership_list(user=request.user, department=department)
    return render(
        request, "departments/detail.html",
        {
            "department": department,
            "members": members,
            "can_manage": selectors.can_manage_department(user=request.user, department=department),
        },
    )


def error_403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return render(request, "errors/403.html", status=403)


def error_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return render(request, "errors/404.html", status=404)


def error_500(request: HttpRequest) -> HttpResponse:
    return render(request, "errors/500.html", status=500)


@login_required
def inbox(request: HttpRequest) -> HttpResponse:
    """Everything that waits on me (decisions to take) and what I was told."""
    user = request.user
    assert isinstance(user, User)
    if request.method == "POST":
        ids = [int(i) for i in request.POST.getlist("notification") if i.isdigit()]
        notification_mark_read(user=user, notification_ids=ids or None)
        return redirect("ui-inbox")
    items = list(inbox_items(user=user)[:200])
    return render(request, "departments/inbox.html", {
        "waiting": [n for n in items if n.action_required and n.read_at is None],
        "others": [n for n in items if not (n.action_required and n.read_at is None)],
    })
