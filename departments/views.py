"""Server-rendered pages for departments and the signed-in user's home."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.views import defaults
from django.views.decorators.http import require_http_methods, require_POST

from config.api.errors import ApplicationError, NotFoundError, PermissionDeniedError, error_body
from config.api.fields import parse_id
from config.web import add_service_errors
from departments import selectors, services
from departments.forms import CityRoleGrantForm, DepartmentContactForm, MemberAddForm, MemberRoleForm
from departments.models import CityRole, Department, Role
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


def _detail_context(request: HttpRequest, department: Department, **extra: Any) -> dict[str, Any]:
    user = request.user
    can_manage = selectors.can_manage_department(user=user, department=department)
    members = None
    if selectors.can_view_members(user=user, department=department):
        members = list(selectors.membership_list(user=user, department=department))
    context: dict[str, Any] = {
        "department": department, "members": members, "can_manage": can_manage, "roles": Role.choices,
        "add_form": MemberAddForm() if can_manage else None, "error_member": None, "row_errors": [],
    }
    context.update(extra)
    return context


def _managed_department(request: HttpRequest, slug: str) -> Department | HttpResponse:
    """The department the signed-in user administers, or the page that says why not."""
    try:
        return selectors.department_get(user=request.user, slug=slug, manage=True)
    except NotFoundError:
        return error_404(request)
    except PermissionDeniedError as exc:
        return error_403(request, exc)


@login_required
def department_detail(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        department = selectors.department_get(user=request.user, slug=slug)
    except NotFoundError:
        return error_404(request, None)
    return render(request, "departments/detail.html", _detail_context(request, department))


@login_required
@require_POST
def department_member_add(request: HttpRequest, slug: str) -> HttpResponse:
    department = _managed_department(request, slug)
    if isinstance(department, HttpResponse):
        return department
    form = MemberAddForm(request.POST)
    if form.is_valid():
        try:
            services.membership_add(actor=request.user, department=department,
                                    user=form.cleaned_data["username"], role=form.cleaned_data["role"])
        except ApplicationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"{form.cleaned_data['username'].username} joined {department.name} "
                                      f"as {Role(form.cleaned_data['role']).label.lower()}.")
            return redirect("ui-department-detail", slug=department.slug)
    return render(request, "departments/detail.html", _detail_context(request, department, add_form=form),
                  status=400)


def _member_action(request: HttpRequest, slug: str, membership_id: int, action: str) -> HttpResponse:
    department = _managed_department(request, slug)
    if isinstance(department, HttpResponse):
        return department
    try:
        membership = selectors.membership_get(user=request.user, department=department, membership_id=membership_id)
    except NotFoundError:
        return error_404(request)
    username = membership.user.username
    try:
        if action == "remove":
            services.membership_remove(actor=request.user, membership=membership)
            messages.success(request, f"{username} was removed from {department.name}.")
        else:
            form = MemberRoleForm(request.POST)
            if not form.is_valid():
                raise ApplicationError("Choose one of the roles.",
                                       fields={"role": [str(e) for e in form.errors["role"]]})
            services.membership_change_role(actor=request.user, membership=membership, role=form.cleaned_data["role"])
            messages.success(request, f"{username} is now {Role(form.cleaned_data['role']).label.lower()}.")
    except ApplicationError as exc:
        errors = [m for ms in exc.fields.values() for m in ms] or [exc.message]
        return render(request, "departments/detail.html",
                      _detail_context(request, department, error_member=membership.pk, row_errors=errors), status=400)
    return redirect("ui-department-detail", slug=department.slug)


@login_required
@require_POST
def department_member_role(request: HttpRequest, slug: str, membership_id: int) -> HttpResponse:
    return _member_action(request, slug, membership_id, "role")


@login_required
@require_POST
def department_member_remove(request: HttpRequest, slug: str, membership_id: int) -> HttpResponse:
    return _member_action(request, slug, membership_id, "remove")


@login_required
@require_http_methods(["GET", "POST"])
def department_edit(request: HttpRequest, slug: str) -> HttpResponse:
    department = _managed_department(request, slug)
    if isinstance(department, HttpResponse):
        return department
    form = DepartmentContactForm(request.POST or None, initial=DepartmentContactForm.initial_of(department))
    if request.method == "POST" and form.is_valid():
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        try:
            if changes:
                services.department_update(actor=request.user, department=department, **changes)
        except ApplicationError as exc:
            add_service_errors(form, exc)
        except ValidationError as exc:
            for name, errors in exc.message_dict.items():
                form.add_error(name if name in form.fields else None, errors)
        else:
            messages.success(request, "The department's details were saved." if changes else "Nothing changed.")
            return redirect("ui-department-detail", slug=department.slug)
    return render(request, "departments/edit.html", {"department": department, "form": form},
                  status=400 if form.errors else 200)


# --- City-wide roles (operators) ---------------------------------------------------------------

@login_required
@require_http_methods(["GET", "POST"])
def city_roles(request: HttpRequest) -> HttpResponse:
    if not selectors.principal_of(request.user).is_staff:
        return error_404(request)
    form = CityRoleGrantForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user, role = form.cleaned_data["username"], form.cleaned_data["role"]
        try:
            services.city_role_grant(actor=request.user, user=user, role=role)
        except ApplicationError as exc:
            exc.fields = exc.fields or {"username": [exc.message]}
            add_service_errors(form, exc)
        else:
            messages.success(request, f"{user.username} is now {CityRole(role).label.lower()}.")
            return redirect("ui-city-roles")
    return render(request, "departments/city_roles.html",
                  {"assignments": selectors.city_role_list(), "form": form}, status=400 if form.errors else 200)


@login_required
@require_POST
def city_role_revoke(request: HttpRequest, assignment_id: int) -> HttpResponse:
    if not selectors.principal_of(request.user).is_staff:
        return error_404(request)
    assignment = selectors.city_role_list().filter(pk=assignment_id).first()
    if assignment is None:
        return error_404(request)
    services.city_role_revoke(actor=request.user, assignment=assignment)
    messages.success(request, f"{assignment.user.username} no longer holds the role "
                              f"{CityRole(assignment.role).label.lower()}.")
    return redirect("ui-city-roles")


# --- My account: roles and API tokens -----------------------------------------------------------

def _account_context(user: User, **extra: Any) -> dict[str, Any]:
    context: dict[str, Any] = {
        "memberships": selectors.user_memberships(user=user),
        "city_roles": selectors.city_role_list().filter(user=user),
        "tokens": selectors.token_list(user=user),
        "new_token": None,
    }
    context.update(extra)
    return context


@login_required
def account(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    return render(request, "account/account.html", _account_context(user))


@login_required
@require_POST
def account_token_issue(request: HttpRequest) -> HttpResponse:
    """Issue an API token and show it once, in this response only: it is never stored in
    clear, never put in a URL or the session, and the page asks not to be cached."""
    user = request.user
    assert isinstance(user, User)
    instance, token = services.token_issue(user=user)
    response = render(request, "account/account.html", _account_context(user, new_token=token, new_key=instance))
    add_never_cache_headers(response)
    return response


@login_required
@require_POST
def account_token_revoke(request: HttpRequest, token_key: str) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    try:
        services.token_revoke(user=user, token_key=token_key)
    except NotFoundError:
        return error_404(request)
    messages.success(request, f"The token {token_key}… was revoked; programs using it are signed out.")
    return redirect("ui-account")


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/v1/")


def error_400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """A request Django refuses before any view (e.g. more form fields than
    DATA_UPLOAD_MAX_NUMBER_FIELDS): in the API's error shape under /api/v1/."""
    if _is_api(request):
        return JsonResponse(error_body(status_code=400, code="bad_request", message="Bad request."), status=400)
    return defaults.bad_request(request, exception or Exception())


def error_403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return render(request, "errors/403.html", status=403)


def error_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):  # e.g. /api/v1/datasets/abc/: the API's one error shape, not a page
        return JsonResponse(error_body(status_code=404, code="not_found", message="Not found."), status=404)
    return render(request, "errors/404.html", status=404)


def error_500(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body(status_code=500, code="error", message="Something went wrong on our side."),
                            status=500)
    return render(request, "errors/500.html", status=500)


@login_required
def inbox(request: HttpRequest) -> HttpResponse:
    """Everything that waits on me (decisions to take) and what I was told."""
    user = request.user
    assert isinstance(user, User)
    if request.method == "POST":
        ids = [n for n in map(parse_id, request.POST.getlist("notification")) if n is not None]
        notification_mark_read(user=user, notification_ids=ids or None)
        return redirect("ui-inbox")
    items = list(inbox_items(user=user)[:200])
    return render(request, "departments/inbox.html", {
        "waiting": [n for n in items if n.action_required and n.read_at is None],
        "others": [n for n in items if not (n.action_required and n.read_at is None)],
    })
