"""Typed errors for every documented error envelope, and which calls may be repeated (pure).

Handlers decide on types, so every code of facts §1.5 (and legacy CRM's empty code, §4.3) must land
in the right class; the retry policy must never repeat a call whose repetition loses or duplicates
data (``event.offline.get`` without a process id, ``crm.*.add``).
"""

from __future__ import annotations

import pytest

from connectors.bitrix24 import errors
from connectors.bitrix24.batch import Command
from connectors.bitrix24.retry import is_retry_safe


@pytest.mark.parametrize(("status", "code", "description", "expected"), [
    (401, "expired_token", "The access token provided has expired", errors.ExpiredToken),
    (401, "invalid_token", "Unable to get application by token", errors.InvalidToken),
    (401, "NO_AUTH_FOUND", "Wrong authorization data", errors.InvalidToken),
    (401, "INVALID_CREDENTIALS", "Invalid request credentials", errors.InvalidToken),
    (403, "INVALID_CREDENTIALS", "Invalid request credentials", errors.InvalidToken),
    (401, "insufficient_scope", "", errors.InsufficientScope),
    (403, "insufficient_scope", "", errors.InsufficientScope),
    (401, "APPLICATION_NOT_FOUND", "", errors.ApplicationUnavailable),
    (401, "ERROR_OAUTH", "Application not installed", errors.ApplicationUnavailable),
    (401, "PAYMENT_REQUIRED", "", errors.ApplicationUnavailable),
    (401, "authorization_error", "", errors.UserNotAuthorized),
    (503, "QUERY_LIMIT_EXCEEDED", "Too many requests", errors.QueryLimitExceeded),
    (503, "OVERLOAD_LIMIT", "", errors.OverloadLimit),
    (429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.",
     errors.OperationTimeLimit),
    (403, "ACCESS_DENIED", "Access denied!", errors.AccessDenied),
    (403, "WRONG_AUTH_TYPE", "", errors.WrongAuthType),
    (403, "WRONG_LICENSE", "This feature is not enabled for the current license: auth_connector",
     errors.WrongLicense),
    (403, "user_access_error", "", errors.UserAccessError),
    (401, "METHOD_CONFIRM_WAITING", "", errors.MethodConfirmation),
    (404, "ERROR_METHOD_NOT_FOUND", "Method not found!", errors.MethodNotFound),
    (400, "NOT_FOUND", "Item not found", errors.NotFound),
    (400, "", "Not found", errors.NotFound),
    (400, "", "Access denied.", errors.AccessDenied),
    (400, "ERROR_ARGUMENT", "Argument 'PROCESS_ID' is null or empty", errors.InvalidArgument),
    (400, "INVALID_ARG_VALUE", "Invalid filter", errors.InvalidArgument),
    (400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded", errors.BatchRejected),
    (405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "", errors.BatchRejected),
    (403, "PORTAL_DELETED", "", errors.PortalDeleted),
    (410, "PORTAL_DELETED", "", errors.PortalDeleted),
    (500, "INTERNAL_SERVER_ERROR", "", errors.ServerError),
    (502, "SOMETHING_ELSE", "", errors.ServerError),
    (401, "SOMETHING_ELSE", "", errors.AuthError),
    (400, "ERROR_CORE", "Unable to set event handler: Handler already binded", errors.ApiError),
])
def test_every_documented_code_maps_to_its_type(status: int, code: str, description: str,
                                                expected: type[errors.ApiError]) -> None:
    error = errors.error_from_body({"error": code, "error_description": description}, status=status,
                                   method="crm.deal.list")
    assert type(error) is expected
    assert error.code == code and error.status == status and "crm.deal.list" in str(error)


def test_hierarchy_reads_as_documented() -> None:
    assert issubclass(errors.ExpiredToken, errors.AuthError)
    assert issubclass(errors.ReauthorizationRequired, errors.AuthError)
    assert issubclass(errors.QueryLimitExceeded, errors.LimitExceeded)
    assert issubclass(errors.WrongLicense, errors.Forbidden)
    assert all(issubclass(cls, errors.Bitrix24Error) for cls in
               (errors.ApiError, errors.TransportError, errors.MalformedResponse, errors.MalformedRecord))


def test_argument_errors_keep_the_argument_name() -> None:
    error = errors.error_from_body({"error": "ERROR_ARGUMENT", "argument": "LIMIT",
                                    "error_description": "Value must be positive integer"}, status=400)
    assert error.argument == "LIMIT"


def test_operation_time_limit_says_when_the_budget_resets() -> None:
    error = errors.error_from_body({"error": "OPERATION_TIME_LIMIT"}, status=429, reset_at=1_778_747_792)
    assert error.reset_at == 1_778_747_792 and "2026-05-14T08:36:32+00:00" in str(error)


def test_malformed_response_gives_status_and_a_short_excerpt() -> None:
    error = errors.MalformedResponse("crm.deal.list", 502, "an HTML page",
                                     b"<html>\n<body>" + b"Bad gateway " * 100 + b"</body></html>")
    assert error.status == 502 and len(error.excerpt) < 200
    assert str(error).startswith(
        "crm.deal.list: malformed response (HTTP 502, an HTML page): '<html> <body>Bad")


@pytest.mark.parametrize(("method", "params", "safe"), [
    ("crm.deal.list", {}, True),
    ("crm.item.fields", {}, True),
    ("event.offline.list", {}, True),
    ("feature.get", {}, True),
    ("event.offline.clear", {"process_id": "x"}, True),
    ("event.offline.get", {"clear": 0}, False),
    ("event.offline.get", {"clear": 1}, False),
    ("event.offline.get", {"process_id": "p", "clear": 0}, True),
    ("event.offline.get", {"process_id": "p"}, False),  # clear defaults to 1: re-reading would delete
    ("event.offline.error", {}, False),
    ("crm.deal.add", {}, False),
    ("crm.item.update", {}, False),
    ("event.bind", {}, False),
])
def test_only_repeatable_calls_are_retried_after_an_unclear_outcome(method: str, params: dict,
                                                                    safe: bool) -> None:
    assert is_retry_safe(method, params) is safe


def test_a_batch_is_repeatable_only_if_every_command_is() -> None:
    reads = {"a": Command("crm.deal.list", {"start": -1}).encode(),
             "b": Command("event.offline.get", {"process_id": "p", "clear": 0}).encode()}
    assert is_retry_safe("batch", {"cmd": reads})
    reserve = {**reads, "c": Command("event.offline.get", {"clear": 0, "limit": 50}).encode()}
    assert not is_retry_safe("batch", {"cmd": reserve})
