"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with the right status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

logger = logging.getLogger(__name__)

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(HTTPException):
    """An error the client should see as it is: a status, a readable message, the offending parameter.

    An HTTPException, so that FastAPI lets it through as it is when it is raised while a form is read
    (by a middleware's `receive`: UploadLimit), where it would turn any other exception into a 400.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def fields(self) -> dict[str, Any]:
        """The constructor's arguments, to carry the error across processes."""
        return {
            "status": self.status,
            "message": self.message,
            "param": self.param,
            "code": self.code,
            "headers": self.headers,
        }

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def queue_timeout() -> ApiError:
    """A request that waited in a model server's queue longer than its `queue_timeout`."""
    message = "The server is overloaded: the request waited too long in the queue."
    return ApiError(503, message, code="queue_timeout", headers={"Retry-After": "5"})


def model_failed(doing: str = "transcribing") -> ApiError:
    """The model raised while working on a request (logged where it happened)."""
    return ApiError(500, f"The model failed while {doing} this request.", code="model_error")


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    param = str(first["loc"][-1]) if first.get("loc") else None
    if first.get("type") == "missing":
        message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
    else:
        message, code = f"Invalid value for '{param}': {first.get('msg')}.", "invalid_value"
    return ApiError(422, message, param=param, code=code).response()


def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return ApiError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)).response()


def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


def _client_gone(_: Request, exc: ClientDisconnect) -> Response:
    """The client left while its request was being read: nobody to answer (499, as nginx logs it)."""
    logger.info("client left while sending its request")
    return Response(status_code=499)


def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return ApiError(500, "The server had an error while processing your request.").response()


def install_error_handlers(app: FastAPI) -> None:
    """Make every error the app raises, FastAPI's own included, answer in OpenAI's shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected_error)
