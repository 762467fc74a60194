"""`ApiError`: a request the API refuses, in OpenAI's error format."""

from __future__ import annotations

from typing import Any

from ..errors import SwarmError

__all__ = ["ApiError"]


class ApiError(SwarmError):
    """A request the API refuses, as OpenAI's API describes it: HTTP status, message, the
    field at fault and an error code."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def to_json(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": self.code,
            }
        }
