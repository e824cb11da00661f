"""Access pages: requests, decisions, grants, the DPO queue and the explanation of a view.

Each view fetches through a scoped selector (404 for what the user may not know exists),
calls one service (403 for what they know but may not do) and redirects after a POST.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from catalog.selectors import dataset_get_for_user
from config.api.errors import ApplicationError, NotFoundError, PermissionDeniedError
from departments.models import Role
from departments.selectors import principal_of, user_memberships
from departments.views import error_403, error_404
from exchange.access import selectors as access_selectors
from exchange.access import services as access_services
from exchange.access.forms import (
    ROW_FILTER_OPS,
    AccessRequestForm,
    CommentForm,
    ConditionRow,
    ReasonForm,
    apply_condition_operation,
    attach_condition_errors,
    check_condition_rows,
    conditions_from_post,
    row_filter_of,
)
from exchange.access.models import AccessForm, GrantStatus, RequestStatus
from exchange.access.policy import effective_view


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


@login_required
def access_home(request: HttpRequest) -> HttpResponse:
    """What waits on me: decisions as steward, second approvals as DPO, recertifications."""
    pending = access_selectors.pending_for(user=request.user)
    return render(request, "exchange/access_home.html", {
        "to_decide": list(pending.requests_to_decide.order_by("created_at")[:100]),
        "awaiting_dpo": list(pending.grants_awaiting_dpo.order_by("created_at")[:100]),
        "to_recertify": list(pending.grants_to_recertify.order_by("last_certified_at")[:100]),
        "principal_roles": principal_of(request.user),
        "my_open": list(access_selectors.access_request_list(user=request.user, mine=True).filter(
            status__in=(RequestStatus.SUBMITTED, RequestStatus.AWAITING_DPO)).order_by("-created_at")[:50]),
    })


ACCESS_REQUEST_INPUTS = ("on_behalf", "purpose", "legal_basis", "requested_start", "requested_end", "comment")


@login_required
def request_access(request: HttpRequest, dataset_id: int) -> HttpResponse:
    """Ask for fields, for me or my department, with any number of row conditions. A GET may
    pre-fill the fields (``?fields=a&fields=b``, names of the current schema only) and the purpose. The "add" and
    "remove" condition buttons (``op``) re-render the form and save nothing; "Send" validates
    through ``access_request_submit`` (the API's validator) and shows each error next to its
    input or its condition."""
    try:
        dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    except NotFoundError:
        return error_404(request)
    user = _user(request)
    schema = access_selectors.current_fields(dataset)
    p = principal_of(user)
    stewarded = [(str(m.department.slug), f"My department: {m.department.name}")
                 for m in user_memberships(user=user)
                 if m.role == Role.STEWARD and m.department_id != dataset.department_id]
    today = timezone.localdate()
    post = request.POST if request.method == "POST" else None
    op = post.get("op", "") if post is not None else ""
    conditions: list[ConditionRow] = conditions_from_post(post) if post is not None else []
    condition_errors: list[str] = []
    announce = ""
    initial: dict[str, Any] = {"requested_start": today, "requested_end": today + dt.timedelta(days=90)}
    if post is None:
        # Pre-filled from a link (e.g. a fulfilled data request): only names of the dataset's
        # current schema are taken, so an unknown name is dropped, never shown back.
        initial["fields_"] = [n for n in request.GET.getlist("fields")[:len(schema)] if n in schema]
        initial["purpose"] = request.GET.get("purpose", "")[:5000]
    if op and post is not None:
        # A row tool: keep what was typed, validate nothing yet.
        conditions, announce = apply_condition_operation(conditions, op,
                                                         limit=access_services.ROW_FILTER_MAX_CONDITIONS)
        initial.update({k: post.get(k) for k in ACCESS_REQUEST_INPUTS if k in post})
        initial["fields_"] = post.getlist("fields_")
        post = None
    form = AccessRequestForm(post, schema=schema, departments=stewarded, initial=initial)
    if post is not None and check_condition_rows(conditions) and form.is_valid():
        department = None
        if form.cleaned_data["on_behalf"]:
            department = access_selectors.department_by_slug(slug=form.cleaned_data["on_behalf"])
        start, end = form.period()
        row_filter, origin = row_filter_of(conditions, schema)
        try:
            access_request = access_services.access_request_submit(
                actor=user, dataset=dataset, fields=form.cleaned_data["fields_"],
                purpose=form.cleaned_data["purpose"], legal_basis=form.cleaned_data["legal_basis"],
                requested_start=start, requested_end=end, row_filter=row_filter or None,
                principal_department=department, comment=form.cleaned_data["comment"],
            )
        except PermissionDeniedError as exc:
            return error_403(request, exc)
        except ApplicationError as exc:
            form.add_service_errors(exc)
            condition_errors = attach_condition_errors(conditions, origin, exc)
        else:
            messages.success(request, f"Your request for {len(access_request.fields)} field(s) of "
                                      f"{dataset.title} was sent to its stewards.")
            return redirect("ui-access-request", request_id=access_request.pk)
    elif post is not None:
        form.is_valid()  # the form's own errors, next to the condition errors found above
    invalid = bool(form.errors) or bool(condition_errors) or any(c.errors for c in conditions)
    rows = [{"field": f, "default_form": access_services.DEFAULT_FORM[f.sensitivity],
             "checked": f.name in (form["fields_"].value() or [])} for f in schema.values()]
    # After a row tool, keyboard focus goes to the new row, or back to "add" after a removal.
    focus_row = len(conditions) - 1 if op == "rf-add" and conditions else None
    focus_add = op.startswith("rf-remove")
    return render(request, "exchange/request_access.html", {
        "dataset": dataset, "form": form, "field_rows": rows,
        "is_owner_member": dataset.department_id in p.department_ids,
        "may_request": bool(p.departments_where(Role.ANALYST, Role.STEWARD)),
        "conditions": conditions, "condition_errors": condition_errors, "announce": announce,
        "focus_row": focus_row, "focus_add": focus_add,
        "condition_fields": list(schema.values()), "condition_ops": ROW_FILTER_OPS,
        "max_conditions": access_services.ROW_FILTER_MAX_CONDITIONS,
    }, status=400 if invalid else 200)


REQUEST_SCOPES = {"mine": "Made by or for me", "all": "All I may see", "to_decide": "To decide"}


@login_required
def access_requests(request: HttpRequest) -> HttpResponse:
    scope = request.GET.get("scope", "mine")
    if scope not in REQUEST_SCOPES:
        scope = "mine"
    qs = access_selectors.access_request_list(user=request.user, mine=scope == "mine",
                                              to_decide=scope == "to_decide")
    page = Paginator(qs.order_by("-created_at", "-id"), 50).get_page(request.GET.get("page"))
    return render(request, "exchange/access_requests.html", {
        "page": page, "scope": scope, "scopes": REQUEST_SCOPES,
    })


@login_required
def access_request_detail(request: HttpRequest, request_id: int) -> HttpResponse:
    try:
        access_request = access_selectors.access_request_get(user=request.user, request_id=request_id)
    except NotFoundError:
        return error_404(request)
    comment_form = CommentForm(request.POST or None)
    if request.method == "POST" and comment_form.is_valid():
        try:
            access_services.access_request_comment(actor=_user(request), access_request=access_request,
                                                   comment=comment_form.cleaned_data["comment"])
        except PermissionDeniedError as exc:
            return error_403(request, exc)
        except ApplicationError as exc:
            _form_errors(comment_form, exc)
        else:
            messages.success(request, "Your comment was added.")
            return redirect("ui-access-request", request_id=access_request.pk)
    return render(request, "exchange/access_request_detail.html",
                  _request_detail_context(request, access_request, comment_form=comment_form),
                  status=400 if comment_form.errors else 200)


def _request_detail_context(request: HttpRequest, access_request: Any, *, comment_form: CommentForm,
                            withdraw_errors: list[str] | None = None, withdraw_comment: str = "") -> dict[str, Any]:
    p = principal_of(request.user)
    return {
        "r": access_request, "comment_form": comment_form,
        "grant_id": access_selectors.request_grant_id(access_request),
        "can_withdraw": access_request.requested_by_id == p.user_id
        and access_request.status in access_services.UNDECIDED,
        "can_decide": access_request.status in access_services.UNDECIDED
        and access_selectors.access_request_decidable(p).filter(pk=access_request.pk).exists(),
        "schema": access_selectors.current_fields(access_request.dataset),
        "withdraw_errors": withdraw_errors or [], "withdraw_comment": withdraw_comment,
    }


@login_required
@require_POST
def access_request_withdraw(request: HttpRequest, request_id: int) -> HttpResponse:
    comment = request.POST.get("comment", "")[:5000]
    try:
        access_request = access_selectors.access_request_get(user=request.user, request_id=request_id)
    except NotFoundError:
        return error_404(request)
    try:
        access_services.access_request_withdraw(actor=_user(request), access_request=access_request,
                                                comment=comment)
    except PermissionDeniedError as exc:
        return error_403(request, exc)
    except ApplicationError as exc:
        # Shown next to the withdraw form, with what was typed; the request is re-read so the
        # page shows its state as it is now.
        access_request = access_selectors.access_request_get(user=request.user, request_id=request_id)
        context = _request_detail_context(request, access_request, comment_form=CommentForm(),
                                          withdraw_errors=_messages_of(exc), withdraw_comment=comment)
        return render(request, "exchange/access_request_detail.html", context, status=exc.status_code)
    messages.success(request, "The request was withdrawn.")
    return redirect("ui-access-request", request_id=request_id)


def _messages_of(exc: ApplicationError) -> list[str]:
    """What to show next to the input: the service's field messages, else its message."""
    found = [m for msgs in exc.fields.values() for m in msgs]
    return found or [exc.message]


@login_required
def access_request_decide(request: HttpRequest, request_id: int) -> HttpResponse:
    """Decide the request field by field: approve in a form (pre-set to the classification's
    default) or deny with a reason."""
    try:
        access_request = access_selectors.access_request_get(user=request.user, request_id=request_id)
        access_services.four_eyes_check(actor=_user(request), access_request=access_request)
    except NotFoundError:
        return error_404(request)
    except PermissionDeniedError as exc:
        return error_403(request, exc)
    schema = access_selectors.current_fields(access_request.dataset)
    errors: dict[str, list[str]] = {}
    general: list[str] = []
    post = request.POST
    if request.method == "POST":
        decisions = [
            access_services.FieldDecisionInput(
                name=name, approved=post.get(f"decision-{name}") == "approve",
                form=post.get(f"form-{name}", "")[:16], reason=post.get(f"reason-{name}", "")[:5000],
            )
            for name in access_request.fields if post.get(f"decision-{name}") in ("approve", "deny")
        ]
        try:
            access_services.access_request_decide(
                actor=_user(request), access_request=access_request, decisions=decisions,
                comment=post.get("comment", "")[:5000], clear_reason=post.get("clear_reason", "")[:5000],
            )
        except PermissionDeniedError as exc:
            return error_403(request, exc)
        except ApplicationError as exc:
            errors = dict(exc.fields)
            general = [exc.message, *errors.pop("fields", [])]
        else:
            messages.success(request, "Your decision was recorded.")
            return redirect("ui-access-request", request_id=access_request.pk)
    rows = []
    for name in access_request.fields:
        field = schema.get(name)
        default = access_services.DEFAULT_FORM[field.sensitivity] if field else ""
        rows.append({
            "name": name, "field": field, "default_form": default,
            "decision": post.get(f"decision-{name}", "approve" if field else "deny"),
            "form": post.get(f"form-{name}", default), "reason": post.get(f"reason-{name}", ""),
            "errors": errors.get(f"fields.{name}", []) + errors.get(f"fields.{name}.form", [])
            + errors.get(f"fields.{name}.reason", []),
        })
    return render(request, "exchange/decide.html", {
        "r": access_request, "rows": rows, "forms": AccessForm.choices, "general_errors": general,
        "clear_reason_errors": errors.get("clear_reason", []), "post": post,
    }, status=400 if (errors or general) else 200)


@login_required
def my_grants(request: HttpRequest) -> HttpResponse:
    grants = access_selectors.grant_list(user=request.user, mine=True).order_by("-created_at", "-id")
    page = Paginator(grants, 50).get_page(request.GET.get("page"))
    return render(request, "exchange/my_grants.html", {"page": page, "now": timezone.now()})


def _department_grants_context(request: HttpRequest, query: QueryDict) -> dict[str, Any] | None:
    """Grants on the datasets of the departments I steward (all, for DPOs); None if neither."""
    p = principal_of(request.user)
    stewarded = p.departments_where(Role.STEWARD)
    if not stewarded and not p.is_dpo:
        return None
    grants = access_selectors.grant_list(user=request.user)
    if not p.is_dpo:
        grants = grants.filter(dataset__department_id__in=stewarded)
    status = query.get("status", GrantStatus.ACTIVE)
    if status in GrantStatus.values:
        grants = grants.filter(status=status)
    if query.get("recertify"):
        grants = grants.filter(access_selectors.needs_recertification_q())
    page = Paginator(grants.order_by("valid_until", "id"), 50).get_page(query.get("page"))
    return {
        "page": page, "status": status, "statuses": GrantStatus.choices, "now": timezone.now(),
        "recertify": bool(query.get("recertify")),
    }


@login_required
def department_grants(request: HttpRequest) -> HttpResponse:
    """Grants on the datasets of the departments I steward, with revoke and certify."""
    context = _department_grants_context(request, request.GET)
    if context is None:
        return error_403(request)
    return render(request, "exchange/department_grants.html", context)


def _dpo_context(request: HttpRequest, query: QueryDict) -> dict[str, Any] | None:
    p = principal_of(request.user)
    if not p.is_dpo:
        return None
    grants = (access_selectors.grants_awaiting_dpo(p).prefetch_related(None)
              .prefetch_related(access_selectors.grant_fields_with_sensitivity()))
    return {"page": Paginator(grants.order_by("created_at", "id"), 50).get_page(query.get("page"))}


GRANT_ACTION_PAGES = {
    "revoke": ("exchange/department_grants.html", _department_grants_context),
    "certify": ("exchange/department_grants.html", _department_grants_context),
    "dpo-approve": ("exchange/dpo_queue.html", _dpo_context),
    "dpo-reject": ("exchange/dpo_queue.html", _dpo_context),
}


def _grant_action(request: HttpRequest, grant_id: int, action: str) -> HttpResponse:
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        back = "/access/"
    form = ReasonForm(request.POST)
    form.is_valid()
    text = form.cleaned_data.get("reason", "")
    try:
        grant = access_selectors.grant_get(user=request.user, grant_id=grant_id)
        user = _user(request)
        if action == "revoke":
            access_services.grant_revoke(actor=user, grant=grant, reason=text)
            done = "The grant was revoked."
        elif action == "certify":
            access_services.grant_certify(actor=user, grant=grant, comment=text)
            done = "The grant was confirmed as still needed."
        elif action == "dpo-approve":
            access_services.grant_dpo_approve(actor=user, grant=grant, comment=text)
            done = "You gave the second approval; the grant is active."
        else:
            access_services.grant_dpo_reject(actor=user, grant=grant, reason=text)
            done = "You refused the grant; the request is denied."
    except NotFoundError:
        return error_404(request)
    except PermissionDeniedError as exc:
        return error_403(request, exc)
    except ApplicationError as exc:
        return _grant_action_refused(request, grant_id, action, exc, typed=request.POST.get("reason", "")[:5000],
                                     back=back)
    messages.success(request, done)
    return redirect(back)


def _grant_action_refused(request: HttpRequest, grant_id: int, action: str, exc: ApplicationError, *,
                          typed: str, back: str) -> HttpResponse:
    """Render again the page the form was on (its filters and page from ``next``), with the
    service's message next to the form of that grant and what the user typed kept."""
    template, build = GRANT_ACTION_PAGES[action]
    context = build(request, QueryDict(urlsplit(back).query))
    if context is None:
        return error_403(request, exc)
    shown = any(g.pk == grant_id for g in context["page"].object_list)
    context["grant_error"] = {"grant_id": grant_id, "action": action, "messages": _messages_of(exc),
                              "value": typed, "shown": shown}
    return render(request, template, context, status=exc.status_code)


@login_required
@require_POST
def grant_action(request: HttpRequest, grant_id: int, action: str) -> HttpResponse:
    if action not in GRANT_ACTION_PAGES:
        return error_404(request)
    return _grant_action(request, grant_id, action)


@login_required
def dpo_queue(request: HttpRequest) -> HttpResponse:
    context = _dpo_context(request, request.GET)
    if context is None:
        return error_403(request)
    return render(request, "exchange/dpo_queue.html", context)


@login_required
def access_explain(request: HttpRequest, dataset_id: int) -> HttpResponse:
    """For the signed-in user: each field visible in which form through which grants, and why
    the others are not."""
    try:
        dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    except NotFoundError:
        return error_404(request)
    user = _user(request)
    view = effective_view(dataset=dataset, user=user)
    hidden = access_selectors.explain_hidden(dataset=dataset, user=user, department=None, hidden=view.hidden)
    return render(request, "exchange/explain.html", {
        "dataset": dataset, "view": view, "hidden": hidden,
        "grants": {g.id: g for g in view.grants},
        "schema": view.schema_fields,
    })


def _form_errors(form: forms.Form, exc: ApplicationError) -> None:
    if not exc.fields:
        form.add_error(None, exc.message)
    for key, msgs in exc.fields.items():
        for message in msgs:
            form.add_error(key if key in form.fields else None, message)
