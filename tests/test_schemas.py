"""Option validation: bad values become one readable 400."""

import pytest

from voxgraph.errors import BadRequest
from voxgraph.schemas import DiarizeOptions, TranscribeOptions, parse_options
from voxgraph.settings import Settings


def test_defaults_and_normalisation():
    o = parse_options(TranscribeOptions, {"language": "EN", "response_format": "srt"})
    assert o.language == "en" and o.response_format == "srt"
    assert o.timestamp_granularities == ["segment"] and o.diarize is False
    assert parse_options(TranscribeOptions, {"language": ""}).language is None


@pytest.mark.parametrize(
    "values",
    [
        {"response_format": "xml"},
        {"language": "english-ish"},
        {"temperature": 3},
        {"timestamp_granularities": ["char"]},
        {"num_speakers": 0},
        {"min_speakers": -1},
        {"bogus": 1},
    ],
)
def test_bad_options_are_400(values):
    with pytest.raises(BadRequest) as e:
        parse_options(TranscribeOptions, values)
    assert "invalid request" in e.value.message
    assert e.value.status == 400


def test_diarize_formats():
    assert parse_options(DiarizeOptions, {"response_format": "rttm"}).response_format == "rttm"
    with pytest.raises(BadRequest, match="response_format"):
        parse_options(DiarizeOptions, {"response_format": "srt"})


def test_settings_env(monkeypatch):
    monkeypatch.setenv("MAX_UPLOAD_MB", "3")
    monkeypatch.setenv("VOXGRAPH_API_KEY", "a, b")
    s = Settings.load({"max_audio_s": 60})
    assert s.max_upload_mb == 3 and s.max_audio_s == 60
    assert [k.get_secret_value() for k in s.api_keys] == ["a", "b"]
