"""Typed errors that map to one HTTP status each.

They travel through Ray handles unchanged (plain picklable exceptions), so a
Python caller of the app handle catches the same class the HTTP layer maps.
"""

from __future__ import annotations


class VoxgraphError(Exception):
    """Base class: `status` is the HTTP status, `code` a stable machine name."""

    status: int = 400
    code: str = "invalid_request"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (type(self), (self.message,))


class BadRequest(VoxgraphError):
    status = 400
    code = "invalid_request"


class EmptyAudio(BadRequest):
    code = "empty_audio"


class UndecodableAudio(BadRequest):
    code = "undecodable_audio"


class TruncatedAudio(UndecodableAudio):
    """The file holds less audio than its header or container declares: it was cut short."""

    code = "truncated_audio"


class UnsupportedMediaType(VoxgraphError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(VoxgraphError):
    status = 413
    code = "payload_too_large"


class AudioTooLong(PayloadTooLarge):
    code = "audio_too_long"


class Unauthorized(VoxgraphError):
    status = 401
    code = "unauthorized"


class RequestTimeout(VoxgraphError):
    """The request body did not arrive in time (stalled, too slow, or past the deadline)."""

    status = 408
    code = "upload_timeout"


class ServiceUnavailable(VoxgraphError):
    """Retryable: a model is loading, the service is overloaded or a replica died."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (self.message, self.retry_after_s))


class ModelLoading(ServiceUnavailable):
    code = "model_loading"


class ModelFailed(ServiceUnavailable):
    code = "model_failed"


class InvalidSpeakerName(BadRequest, ValueError):
    code = "invalid_speaker_name"


class InvalidVoiceprint(BadRequest, ValueError):
    """Clip embeddings or speech durations that cannot make a voiceprint."""

    code = "invalid_voiceprint"


class SpeakerNameTaken(VoxgraphError):
    status = 409
    code = "speaker_name_taken"


class SpeakerNotFound(VoxgraphError):
    status = 404
    code = "speaker_not_found"
