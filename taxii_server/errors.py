"""The TAXII server's errors: each knows the HTTP status and TAXII error title it is shown as."""

from __future__ import annotations

from feeds.errors import SpampotsError


class TaxiiServerError(SpampotsError):
    """Root of the TAXII server's errors; shown to the client as a TAXII error resource."""

    http_status = 500
    title = "Internal Error"


class BadRequest(TaxiiServerError):
    http_status = 400
    title = "Bad Request"


class Unauthorized(TaxiiServerError):
    http_status = 401
    title = "Unauthorized"


class Forbidden(TaxiiServerError):
    http_status = 403
    title = "Forbidden"


class NotFound(TaxiiServerError):
    http_status = 404
    title = "Not Found"


class NotAcceptable(TaxiiServerError):
    http_status = 406
    title = "Not Acceptable"


class PayloadTooLarge(TaxiiServerError):
    http_status = 413
    title = "Payload Too Large"


class UnsupportedMediaType(TaxiiServerError):
    http_status = 415
    title = "Unsupported Media Type"


class InvalidObject(TaxiiServerError):
    """A STIX object that cannot be stored: no valid id, type or version timestamp."""

    http_status = 422
    title = "Unprocessable Object"
