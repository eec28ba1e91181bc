"""Every failure the connector can meet, as a readable hierarchy of types.

Bitrix24 reports errors as HTTP status + ``{"error": CODE, "error_description": TEXT}`` (facts §1.4);
`error_from_body` turns one of those into the matching type. Handlers decide on types
(`ExpiredToken` -> refresh, `QueryLimitExceeded` -> back off, `NotFound` -> tombstone), never on
strings. Messages never carry secrets: descriptions pass through `redaction.redact` first.

    Bitrix24Error
    ├── TransportError                  connect errors, dropped connections, timeouts
    ├── MalformedResponse               HTML pages, broken JSON, JSON of the wrong shape
    ├── MalformedRecord                 a record whose id or modification time is unreadable
    └── ApiError                        the portal answered with an error envelope
        ├── AuthError                   401: the credentials are not (or no longer) good
        │   ├── ExpiredToken            expired_token: refresh and retry
        │   ├── InvalidToken            invalid_token, NO_AUTH_FOUND, INVALID_CREDENTIALS
        │   ├── InsufficientScope
        │   ├── ApplicationUnavailable  APPLICATION_NOT_FOUND, ERROR_OAUTH, PAYMENT_REQUIRED
        │   ├── UserNotAuthorized       authorization_error (user fired / inactive)
        │   └── ReauthorizationRequired invalid_grant from the OAuth server: a human must re-install
        ├── LimitExceeded
        │   ├── QueryLimitExceeded      503: the leaky bucket is full
        │   ├── OverloadLimit           503: REST blocked manually
        │   └── OperationTimeLimit      429: the method's time budget is spent until reset_at
        ├── Forbidden                   403
        │   ├── AccessDenied
        │   ├── WrongAuthType           webhook calling an app-only method (event.*)
        │   ├── WrongLicense            plan lacks a feature (e.g. extended offline events)
        │   ├── UserAccessError
        │   └── MethodConfirmation      METHOD_CONFIRM_WAITING / METHOD_CONFIRM_DENIED
        ├── MethodNotFound
        ├── NotFound                    NOT_FOUND, and legacy CRM's empty code with "Not found"
        ├── InvalidArgument             ERROR_ARGUMENT, INVALID_ARG_VALUE, INVALID_REQUEST, ...
        ├── BatchRejected               ERROR_BATCH_LENGTH_EXCEEDED, ERROR_BATCH_METHOD_NOT_ALLOWED
        ├── PortalDeleted
        └── ServerError                 500 family and unexplained 5xx
"""

from __future__ import annotations

from datetime import UTC, datetime

from connectors.bitrix24.redaction import redact


class Bitrix24Error(Exception):
    """Base of everything this package raises about talking to a portal."""


class TransportError(Bitrix24Error):
    """The HTTP exchange itself failed (connection refused or dropped, timeout)."""


class MalformedResponse(Bitrix24Error):
    """The portal answered something that is not a Bitrix24 JSON envelope."""

    def __init__(self, method: str, status: int, reason: str, body: bytes | str = b"") -> None:
        self.method = method
        self.status = status
        self.reason = reason
        self.excerpt = _excerpt(body)
        super().__init__(f"{method}: malformed response (HTTP {status}, {reason}): {self.excerpt!r}")


class MalformedRecord(Bitrix24Error):
    """A record whose key fields (id, modification time) are missing or unreadable; other values that do
    not fit their column are NULL by the value policy (`connectors.bitrix24.values`), not errors."""

    def __init__(self, table: str, column: str, entity_id: object, value: object) -> None:
        self.table = table
        self.column = column
        self.entity_id = entity_id
        super().__init__(f"{table}.{column} of id {entity_id!r}: unexpected value {_excerpt(repr(value))!r}")


class ApiError(Bitrix24Error):
    """The portal rejected a call with a documented error envelope."""

    def __init__(self, code: str, description: str = "", *, status: int | None = None,
                 method: str = "", argument: str | None = None) -> None:
        self.code = code
        self.description = redact(description)
        self.status = status
        self.method = method
        self.argument = argument
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.method}: " if self.method else ""
        status = f"HTTP {self.status} " if self.status is not None else ""
        code = self.code or "<empty code>"
        return f"{where}{status}{code}: {self.description}"


class AuthError(ApiError):
    """401 family: the call was not authenticated."""


class ExpiredToken(AuthError):
    """The access token has expired; refresh it and retry once (facts §7.2)."""


class InvalidToken(AuthError):
    """The token or webhook code is unknown to the portal."""


class InsufficientScope(AuthError):
    """The app or webhook lacks the scope the method needs (401 per source, 403 per docs: §10.2)."""


class ApplicationUnavailable(AuthError):
    """The app is deleted, not installed, or its subscription ended."""


class UserNotAuthorized(AuthError):
    """The user the token acts as cannot be authorized (fired or inactive)."""


class ReauthorizationRequired(AuthError):
    """The refresh token is no longer accepted: a portal admin must authorize the app again."""

    def __init__(self, portal: str, description: str = "") -> None:
        self.portal = portal
        detail = f" ({redact(description)})" if description else ""
        super().__init__(
            "invalid_grant",
            f"the refresh token of portal {portal!r} is no longer valid{detail}; "
            "re-authorize this portal (reinstall or re-open the app as an administrator)",
        )


class LimitExceeded(ApiError):
    """A portal limit stopped the call before it ran; retrying later is safe."""


class QueryLimitExceeded(LimitExceeded):
    """503: the portal's leaky bucket of requests is full (facts §6.1)."""


class OverloadLimit(LimitExceeded):
    """503 OVERLOAD_LIMIT: REST is blocked for this portal by hand."""


class OperationTimeLimit(LimitExceeded):
    """429: the method's 10-minute operating-time budget is spent (facts §6.2)."""

    def __init__(self, code: str, description: str = "", *, status: int | None = None,
                 method: str = "", argument: str | None = None, reset_at: float | None = None) -> None:
        self.reset_at = reset_at
        super().__init__(code, description, status=status, method=method, argument=argument)

    def _message(self) -> str:
        message = super()._message()
        if self.reset_at is None:
            return message
        reset = datetime.fromtimestamp(self.reset_at, UTC).isoformat(timespec="seconds")
        return f"{message} (budget resets at {reset})"


class Forbidden(ApiError):
    """403 family: authenticated, but not allowed."""


class AccessDenied(Forbidden):
    """Not allowed for this user (offline events need an administrator, facts §2.2)."""


class WrongAuthType(Forbidden):
    """Webhooks cannot call app-only methods such as event.* (facts §2.2)."""


class WrongLicense(Forbidden):
    """The portal's plan lacks a feature; ``feature`` is the text Bitrix names it by."""

    _PREFIX = "This feature is not enabled for the current license:"

    @property
    def feature(self) -> str:
        if self.description.startswith(self._PREFIX):
            return self.description[len(self._PREFIX):].strip()
        return self.description


class UserAccessError(Forbidden):
    """The user has no access to the application."""


class MethodConfirmation(Forbidden):
    """The method waits for (or was denied) an administrator's confirmation."""


class MethodNotFound(ApiError):
    """Unknown method (or a REST 3.0 method called without /api/)."""


class NotFound(ApiError):
    """The object does not exist (or is not visible to this user)."""


class InvalidArgument(ApiError):
    """The call's parameters were rejected."""


class BatchRejected(ApiError):
    """A batch sub-command was refused (too many commands, or a method not allowed in batch)."""


class PortalDeleted(ApiError):
    """The portal no longer exists (403, 410 or 500 depending on the source: facts §10.3)."""


class ServerError(ApiError):
    """The portal failed internally (500 family)."""


_BY_CODE: dict[str, type[ApiError]] = {
    "expired_token": ExpiredToken,
    "invalid_token": InvalidToken,
    "NO_AUTH_FOUND": InvalidToken,
    "INVALID_CREDENTIALS": InvalidToken,
    "insufficient_scope": InsufficientScope,
    "APPLICATION_NOT_FOUND": ApplicationUnavailable,
    "ERROR_OAUTH": ApplicationUnavailable,
    "PAYMENT_REQUIRED": ApplicationUnavailable,
    "authorization_error": UserNotAuthorized,
    "QUERY_LIMIT_EXCEEDED": QueryLimitExceeded,
    "OVERLOAD_LIMIT": OverloadLimit,
    "OPERATION_TIME_LIMIT": OperationTimeLimit,
    "ACCESS_DENIED": AccessDenied,
    "allowed_only_intranet_user": AccessDenied,
    "WRONG_AUTH_TYPE": WrongAuthType,
    "WRONG_LICENSE": WrongLicense,
    "user_access_error": UserAccessError,
    "METHOD_CONFIRM_WAITING": MethodConfirmation,
    "METHOD_CONFIRM_DENIED": MethodConfirmation,
    "ERROR_METHOD_NOT_FOUND": MethodNotFound,
    "NOT_FOUND": NotFound,
    "ERROR_ARGUMENT": InvalidArgument,
    "INVALID_ARG_VALUE": InvalidArgument,
    "INVALID_REQUEST": InvalidArgument,
    "CODE_EMPTY": InvalidArgument,
    "ERROR_EVENT_NOT_FOUND": InvalidArgument,
    "ERROR_BATCH_LENGTH_EXCEEDED": BatchRejected,
    "ERROR_BATCH_METHOD_NOT_ALLOWED": BatchRejected,
    "PORTAL_DELETED": PortalDeleted,
    "INTERNAL_SERVER_ERROR": ServerError,
    "ERROR_UNEXPECTED_ANSWER": ServerError,
}

# Legacy crm.* methods answer with an empty code and the meaning in the text (facts §4.3).
_LEGACY_BY_TEXT: dict[str, type[ApiError]] = {
    "not found": NotFound,
    "access denied.": AccessDenied,
    "id is not defined or invalid": InvalidArgument,
}


def _class_for(code: str, description: str, status: int | None) -> type[ApiError]:
    if code in _BY_CODE:
        return _BY_CODE[code]
    if not code:
        legacy = _LEGACY_BY_TEXT.get(description.strip().lower())
        if legacy is not None:
            return legacy
    if status == 401:
        return AuthError
    if status == 403:
        return Forbidden
    if status == 429:
        return OperationTimeLimit
    if status is not None and status >= 500:
        return ServerError
    return ApiError


def error_from_body(body: dict, *, status: int | None = None, method: str = "",
                    reset_at: float | None = None) -> ApiError:
    """The typed exception for an error envelope (``status`` is None inside a batch)."""
    code = str(body.get("error") or "")
    description = str(body.get("error_description") or "")
    argument = body.get("argument")
    cls = _class_for(code, description, status)
    if issubclass(cls, OperationTimeLimit):
        return cls(code, description, status=status, method=method, argument=argument, reset_at=reset_at)
    return cls(code, description, status=status, method=method, argument=argument)


def _excerpt(body: bytes | str, limit: int = 160) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + "…"
    return redact(text)
