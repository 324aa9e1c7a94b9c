"""ARM failures, classified once so every caller makes the same retry decision."""

from __future__ import annotations

from typing import Any


class ArmError(Exception):
    """An ARM call failed; `retryable` says whether waiting can fix it.

    `origin` names who reported the failure. It is "ARM" only for ARM's own answers (and the
    transport to ARM); the credential layer's errors say "identity endpoint", "token file" or
    "configuration", so a log line or message never words them as something ARM said.
    """

    origin = "ARM"

    def __init__(self, status: int, code: str, message: str, *, retryable: bool,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after

    @property
    def throttled(self) -> bool:
        return self.status == 429


class AuthenticationFailed(ArmError):
    """No usable token: ARM refused the one it was given (401), or the credential could not
    supply one for now (the subclasses in `batchcompute_operator.credentials`)."""

    def __init__(self, message: str, status: int = 401, code: str = "AuthenticationFailed") -> None:
        # Credentials recover on their own (token rotation, identity propagation), so retry slowly.
        super().__init__(status, code, message, retryable=True)


class UnsafeUrl(ArmError):
    """ARM pointed us at a URL we will not send a token to."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "UnsafeOperationUrl", message, retryable=False)


def error_from_body(status: int, body: Any, retry_after: float | None) -> ArmError:
    """Build an ArmError from an ARM error body, tolerating bodies that are not ARM-shaped."""
    code, message = f"HTTP{status}", "no error details in the response"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("error"), dict):
            err = err["error"]  # older API versions nested the error one level deeper
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
    elif isinstance(body, str) and body.strip():
        message = body.strip()[:300]
    retryable = status in (408, 429) or status >= 500
    if status == 401:
        return AuthenticationFailed(message, status=status, code=code)
    return ArmError(status, code, message, retryable=retryable, retry_after=retry_after)
