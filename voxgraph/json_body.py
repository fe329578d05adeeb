"""The JSON request shape of the Hugging Face Inference Endpoint the service grew from.

`{"inputs": "<base64 audio>", "parameters": {...}}`: `inputs` is the audio file
as base64 text (or a `data:audio/...;base64,...` URL), `parameters` the options
the multipart form takes, under the form's names (`timestamp_granularities[]`
or `timestamp_granularities`, `known_speaker_names[]` or `known_speaker_names`).

`parse_json_body` turns such a body into what the form path hands the service,
`(audio bytes, options)`, with the same limits and 400s; nothing here imports
Ray, FastAPI or NeMo.

Memory: base64 is 4/3 of the audio, so a body may be at most
`json_body_limit(max_bytes)`. The raw body, its text and the decoded audio are
each dropped as soon as the next one exists, and base64 is decoded straight from
the parsed string (no ASCII copy), so at most two of them are held at once.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from voxgraph.errors import BadRequest, PayloadTooLarge
from voxgraph.schemas import Options, validation_problems

# Room beside the base64 for the JSON framing and `parameters` (names, hints).
JSON_SLACK_BYTES = 64 * 1024
JSON_FIELDS = ("inputs", "parameters")
SHAPE = '{"inputs": "<base64 audio>", "parameters": {...}}'
# Line-wrapped base64 (`base64` without -w0, MIME): the alphabet and whitespace only.
_WRAPPED_B64 = re.compile(r"[A-Za-z0-9+/=\s]*")
_DATA_HEAD_MAX = 256


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON (`application/json`, `application/*+json`)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def json_body_limit(max_bytes: int) -> int:
    """The largest JSON body for `max_bytes` of audio: its base64 plus room for options."""
    return (max_bytes + 2) // 3 * 4 + JSON_SLACK_BYTES


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"upload is over the {max_bytes / 2**20:g} MB limit (MAX_UPLOAD_MB; "
        "as base64 in a JSON body the audio may take 4/3 of it)"
    )


def parse_json_body(
    body: bytes | bytearray | str | Mapping[str, Any],
    options: type[Options],
    *,
    max_bytes: int,
) -> tuple[bytes, dict[str, Any]]:
    """(audio bytes, options as the form path gives them) from a JSON body.

    `body` is the raw request body, its text, or the parsed object (a handle
    caller's dict). A `bytearray` is consumed: it is cleared once decoded to
    text, so the raw body is not held beside it. `options` is the route's
    options model (extra=forbid): unknown parameters are a 400 naming them.
    Raises BadRequest (400) for anything malformed, PayloadTooLarge (413) over
    the limit.
    """
    doc = _document(body, max_bytes)
    inputs = doc.get("inputs")
    if inputs is None:
        raise BadRequest(
            f"no audio: a JSON body carries the file as base64 text in 'inputs' ({SHAPE}); "
            "or send multipart/form-data with the file in the field 'file'"
        )
    unknown = sorted(k for k in doc if k not in JSON_FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(map(repr, unknown))} in the JSON body: it takes "
            "'inputs' (base64 audio or a data: URL) and 'parameters' (the form's options)"
        )
    if not isinstance(inputs, str):
        raise BadRequest(
            "'inputs' must be a string: the audio file as base64 or a data: URL, "
            f"not {_json_type(inputs)}"
        )
    del inputs  # `_audio` takes the only reference, so it can drop the text
    opts = _options(doc.get("parameters"), options)
    return _audio(doc, max_bytes), opts


def _document(body: bytes | bytearray | str | Mapping[str, Any], max_bytes: int) -> dict[str, Any]:
    if isinstance(body, Mapping):
        return dict(body)  # a shallow copy: popping `inputs` leaves the caller's dict whole
    if len(body) > json_body_limit(max_bytes):
        raise _too_large(max_bytes)
    if isinstance(body, bytes | bytearray):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest(f"invalid JSON body: not UTF-8 text ({e.reason})") from None
        if isinstance(body, bytearray):
            body.clear()
    elif isinstance(body, str):
        text = body
    else:
        raise BadRequest(f"the JSON body must be text or an object, not {type(body).__name__}")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise BadRequest(f"invalid JSON body: {e}; send {SHAPE}") from None
    except RecursionError:
        raise BadRequest(f"invalid JSON body: nested too deeply; send {SHAPE}") from None
    del text
    if not isinstance(doc, dict):
        raise BadRequest(f"the JSON body must be an object {SHAPE}, not {_json_type(doc)}")
    return doc


def _options(parameters: Any, model: type[Options]) -> dict[str, Any]:
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise BadRequest(
            "'parameters' must be a JSON object of the route's options "
            f'(e.g. {{"response_format": "verbose_json"}}), not {_json_type(parameters)}'
        )
    try:
        opts = model.model_validate({k: v for k, v in parameters.items() if v is not None})
    except ValidationError as e:
        errors = [{**err, "loc": ("parameters", *err["loc"])} for err in e.errors()]
        raise BadRequest(f"invalid request: {validation_problems(errors)}") from None
    # As the form path gives them: Python names, only what was sent.
    return opts.model_dump(exclude_unset=True)


def _audio(doc: dict[str, Any], max_bytes: int) -> bytes:
    """The audio of `doc["inputs"]`, base64 or a base64 data: URL, popped and dropped here."""
    what = "'inputs'"
    inputs: str = doc.pop("inputs")
    if inputs[:5].lower() == "data:":
        comma = inputs.find(",", 0, _DATA_HEAD_MAX)
        if comma < 0:
            raise BadRequest(f"{what} is a data: URL without a ',' before its data")
        _check_data_head(inputs[5:comma])
        inputs = inputs[comma + 1 :]
    if len(inputs) > json_body_limit(max_bytes):
        raise _too_large(max_bytes)
    try:
        try:
            # Straight from the str (ASCII strings are read in place, not copied).
            data = binascii.a2b_base64(inputs, strict_mode=True)
        except binascii.Error:
            if not _WRAPPED_B64.fullmatch(inputs):
                raise
            data = binascii.a2b_base64(inputs)  # line-wrapped: whitespace is skipped
    except binascii.Error as e:
        raise BadRequest(f"{what} is not valid base64 audio: {e}") from None
    except ValueError:
        raise BadRequest(f"{what} is not valid base64 audio: it holds non-ASCII text") from None
    del inputs
    if not data:
        raise BadRequest(f"the audio in {what} is empty")
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


def _check_data_head(head: str) -> None:
    params = head.split(";")
    media = params[0].strip().lower()
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise BadRequest(
            f"'inputs' as a data: URL must be base64 ('data:{media or 'audio/wav'};base64,...')"
        )
    if media and not media.startswith(("audio/", "video/", "application/octet-stream")):
        raise BadRequest(f"'inputs' is a data: URL of media type {media!r}, not audio")


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names.update({list: "an array", dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)
