"""Bitrix24 REST errors as the portal reports them: HTTP status + ``error`` + ``error_description``.

Method handlers raise these; the transport turns them into the documented envelope
(bitrix24-api.md §1.4-§1.5). Legacy CRM methods use an empty ``error`` code (§4.3).
"""

from __future__ import annotations


class RestError(Exception):
    status: int = 400
    code: str = "ERROR_CORE"

    def __init__(self, description: str = "", *, code: str | None = None, status: int | None = None,
                 argument: str | None = None) -> None:
        super().__init__(description)
        self.description = description
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.argument = argument

    def body(self) -> dict:
        body = {"error": self.code, "error_description": self.description}
        if self.argument is not None:
            body["argument"] = self.argument
        return body


class ArgumentError(RestError):
    code = "ERROR_ARGUMENT"

    def __init__(self, description: str, argument: str | None = None) -> None:
        super().__init__(description, argument=argument)


class LegacyCrmError(RestError):
    """crm.deal.* and friends: HTTP 400, empty code, text only (e.g. "Not found")."""

    code = ""


class MethodNotFound(RestError):
    status = 404
    code = "ERROR_METHOD_NOT_FOUND"

    def __init__(self, description: str = "Method not found!") -> None:
        super().__init__(description)


class AccessDenied(RestError):
    status = 403
    code = "ACCESS_DENIED"

    def __init__(self, description: str = "Access denied!") -> None:
        super().__init__(description)


class WrongAuthType(RestError):
    status = 403
    code = "WRONG_AUTH_TYPE"

    def __init__(self, description: str = "Current authorization type is denied for this method") -> None:
        super().__init__(description)


class WrongLicense(RestError):
    status = 403
    code = "WRONG_LICENSE"

    def __init__(self, feature_text: str) -> None:
        super().__init__(f"This feature is not enabled for the current license: {feature_text}")


class InsufficientScope(RestError):
    # Docs say 403, source and real-portal SDK tests say 401 (facts sheet §10.2): we answer 401.
    status = 401
    code = "insufficient_scope"

    def __init__(self, description: str = "The request requires higher privileges than provided by the "
                                          "access token") -> None:
        super().__init__(description)


class AuthError(RestError):
    """401 family: expired_token, invalid_token, NO_AUTH_FOUND, INVALID_CREDENTIALS ..."""

    status = 401


class QueryLimitExceeded(RestError):
    status = 503
    code = "QUERY_LIMIT_EXCEEDED"

    def __init__(self) -> None:
        super().__init__("Too many requests")


class OperationTimeLimit(RestError):
    status = 429
    code = "OPERATION_TIME_LIMIT"

    def __init__(self) -> None:
        super().__init__("Method is blocked due to operation time limit.")
