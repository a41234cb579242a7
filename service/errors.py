"""Domain errors. Each carries an `error_type`; the API maps types to status codes in one table.

No HTTP here: the runtime raises these and the API layer translates them.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    error_type = "internal"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        """The request field at fault, when one is (OpenAI's error `param`)."""


class ValidationError(ServiceError):
    """The request is well-formed JSON but asks for something invalid."""

    error_type = "validation"


class TooManyTextsError(ServiceError):
    """More texts (or pairs) in one request than the configured limit."""

    error_type = "too_many_texts"


class TextTooLongError(ServiceError):
    """A text exceeds the character limit, or the token limit with truncation off."""

    error_type = "text_too_long"


class BodyTooLargeError(ServiceError):
    """The request body exceeds the configured byte limit."""

    error_type = "body_too_large"


class UnsupportedMediaTypeError(ServiceError):
    """The request body's content type is not one the route reads."""

    error_type = "unsupported_media_type"


class QueueFullError(ServiceError):
    """The batcher's queue is full; the client should retry later."""

    error_type = "queue_full"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds after which a retry is likely to be admitted (the Retry-After header)."""


class NotReadyError(ServiceError):
    """The model is still loading or warming up."""

    error_type = "not_ready"


class NotFoundError(ServiceError):
    """A named resource does not exist."""

    error_type = "not_found"


class ConflictError(ServiceError):
    """The request conflicts with the stored state."""

    error_type = "conflict"


class UnauthorizedError(ServiceError):
    """No valid API key was presented."""

    error_type = "unauthorized"


class ForbiddenError(ServiceError):
    """The API key lacks the scope the route needs."""

    error_type = "forbidden"


class NoCrossEncoderError(ServiceError):
    """A cross-encoder route or mode was asked of a bundle built without one."""

    error_type = "no_cross_encoder"


class BundleError(ServiceError):
    """A model bundle is missing files, fails its hashes, or its dims disagree."""

    error_type = "bad_bundle"
