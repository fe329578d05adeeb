"""The configuration surface: README's tables, precedence, environment names, secrets.

README "Configuration" lists every key of the builder args and of the service
settings; the tests below hold the tables and the code to each other in both
directions (a key missing from either side fails), check each listed default, and
set each listed environment variable to see it take effect.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

import graph
from voxgraph.settings import ENV_PREFIX, ModelConfig, Settings

README = Path(__file__).resolve().parent.parent / "README.md"
ROLES = graph.ROLES
GROUPS = {"asr", "diarizer", "embedder", "ingress", "settings"}
SECRET = "sk-very-secret-value"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No VOXGRAPH_* (or short alias) variable from this machine leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX) or name.upper() in ("MAX_UPLOAD_MB", "MAX_AUDIO_S"):
            monkeypatch.delenv(name)


# ------------------------------------------------------------------ README's tables


def _rows() -> list[tuple[str, str, set[str]]]:
    """(key, default cell without backticks, environment names) of each table row."""
    text = README.read_text()
    start = text.index("\n## Configuration\n")
    end = text.index("\n## ", start + 1)
    rows = []
    for line in text[start:end].splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 4, line
        key, default, env, _ = cells
        rows.append((key.strip("`"), default.replace("`", ""), set(re.findall(r"`([^`]+)`", env))))
    return rows


def _documented() -> dict[str, tuple[str, set[str]]]:
    rows = _rows()
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys)), "a key listed twice"
    return {key: (default, env) for key, default, env in rows}


def _expected_keys() -> set[str]:
    args_fields = set(graph.VoxgraphArgs.model_fields)
    assert args_fields >= GROUPS
    return (
        {f"<role>.{f}" for f in graph.ModelDeploymentArgs.model_fields}
        | {f"ingress.{f}" for f in graph.IngressArgs.model_fields}
        | {f"settings.{f}" for f in Settings.model_fields}
        | (args_fields - GROUPS)
    )


def test_readme_lists_exactly_the_keys_that_exist():
    documented, expected = set(_documented()), _expected_keys()
    assert expected - documented == set(), "keys missing from README's Configuration tables"
    assert documented - expected == set(), "README lists keys the code does not have"


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "none" if not value else ", ".join(map(str, value))
    return str(value)


def _defaults(key: str) -> dict[str, Any]:
    """The code's default for a README key: {role: value} for `<role>.` keys, else {"": value}."""
    args = graph.VoxgraphArgs()
    group, _, field = key.rpartition(".")
    if group == "<role>":
        return {role: getattr(getattr(args, role), field) for role in ROLES}
    if group == "settings":
        return {"": getattr(Settings(), field)}
    if group == "ingress":
        return {"": getattr(args.ingress, field)}
    return {"": getattr(args, key)}


def test_readme_defaults_are_the_code_defaults():
    for key, (cell, _) in _documented().items():
        defaults = _defaults(key)
        if len(set(map(_fmt, defaults.values()))) == 1:
            value = _fmt(next(iter(defaults.values())))
            assert re.match(rf"{re.escape(value)}\b", cell), (key, cell, value)
        else:
            for role, value in defaults.items():
                assert f"{role} {_fmt(value)}" in cell, (key, cell, role, value)


def test_readme_environment_names_are_the_code_names():
    for key, (_, env) in _documented().items():
        group, _, field = key.rpartition(".")
        if group == "settings":
            expected = set(Settings.env_names(field))
        elif group == "<role>":
            expected = {f"{ENV_PREFIX}<ROLE>__{field.upper()}"}
            if field == "model":
                expected.add(f"{ENV_PREFIX}<ROLE>_MODEL")
        elif group == "ingress":
            expected = {f"{ENV_PREFIX}INGRESS__{field.upper()}"}
        else:
            expected = {f"{ENV_PREFIX}{key.upper()}"}
        assert env == expected, key


def _candidate(field: str, default: Any) -> tuple[str, Any]:
    """An environment value other than the default, and what it parses to."""
    if field == "model":
        return "other.nemo", "other.nemo"
    if field == "precision":
        return "fp16", "fp16"
    if field == "omp_wait_policy":
        return "passive", "passive"
    if field == "speakers_db":
        return "sqlite:////srv/voxgraph/speakers.db", "sqlite:////srv/voxgraph/speakers.db"
    if isinstance(default, bool):
        return "true", not default
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return str(default + 0.25), default + 0.25
    if isinstance(default, list):
        return "a, b", ["a", "b"]
    if default is None and field.endswith("_s"):  # an optional limit in seconds
        return "30", 30.0
    raise AssertionError(f"no candidate for {field}={default!r}")


def _read(key: str, role: str) -> Any:
    group, _, field = key.rpartition(".")
    if group == "settings":
        value = getattr(Settings(), field)
    elif group == "<role>":
        value = getattr(getattr(graph.VoxgraphArgs(), role), field)
    elif group == "ingress":
        value = getattr(graph.VoxgraphArgs().ingress, field)
    else:
        value = getattr(graph.VoxgraphArgs(), key)
    if isinstance(value, list):
        return [v.get_secret_value() if isinstance(v, SecretStr) else v for v in value]
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def test_every_listed_environment_variable_takes_effect(monkeypatch):
    checked = 0
    for key, (_, env) in _documented().items():
        defaults = _defaults(key)
        for role, default in defaults.items():
            raw, want = _candidate(key.rpartition(".")[2], default)
            for name in env:
                concrete = name.replace("<ROLE>", role.upper())
                with monkeypatch.context() as m:
                    m.setenv(concrete, raw)
                    got = _read(key, role)
                assert got == want, (concrete, got, want)
                checked += 1
    assert checked > 50  # every row, every role, every name


# ------------------------------------------------------------------ precedence


def test_settings_precedence_args_then_env_then_defaults(monkeypatch):
    assert Settings().max_upload_mb == 200
    monkeypatch.setenv("VOXGRAPH_MAX_UPLOAD_MB", "50")
    assert Settings.load().max_upload_mb == 50
    assert Settings.load(None).max_upload_mb == 50
    assert Settings.load({"max_upload_mb": 8}).max_upload_mb == 8
    # Keys the args leave out still come from the environment.
    monkeypatch.setenv("VOXGRAPH_DIAR_WINDOW_S", "60")
    s = Settings.load({"max_upload_mb": 8})
    assert (s.max_upload_mb, s.diar_window_s, s.asr_window_s) == (8, 60, 300)


def test_builder_args_precedence(monkeypatch):
    monkeypatch.setenv("VOXGRAPH_ASR__MODEL", "env.nemo")
    monkeypatch.setenv("VOXGRAPH_ASR__MAX_BATCH_SIZE", "3")
    args = graph.VoxgraphArgs(asr={"model": "args.nemo"})
    # Args win; the environment fills what they leave out; defaults the rest.
    assert args.asr.model == "args.nemo"
    assert args.asr.max_batch_size == 3
    assert args.asr.num_gpus == graph.ROLE_DEFAULTS["asr"]["num_gpus"]
    assert graph.VoxgraphArgs().asr.model == "env.nemo"


def test_empty_environment_values_are_unset(monkeypatch):
    monkeypatch.setenv("VOXGRAPH_API_KEY", "")
    monkeypatch.setenv("MAX_UPLOAD_MB", "")
    monkeypatch.setenv("VOXGRAPH_ASR__MODEL", "")
    s = Settings()
    assert s.api_keys == [] and s.max_upload_mb == 200
    assert graph.VoxgraphArgs().asr.model == graph.ROLE_DEFAULTS["asr"]["model"]


# ------------------------------------------------------------------ aliases


def test_spec_names_are_aliases(monkeypatch):
    monkeypatch.setenv("MAX_UPLOAD_MB", "3")
    monkeypatch.setenv("MAX_AUDIO_S", "60")
    monkeypatch.setenv("VOXGRAPH_API_KEY", "a, b,,")
    s = Settings()
    assert (s.max_upload_mb, s.max_audio_s) == (3, 60)
    assert [k.get_secret_value() for k in s.api_keys] == ["a", "b"]
    # The prefixed name is looked up first.
    monkeypatch.setenv("VOXGRAPH_MAX_UPLOAD_MB", "4")
    monkeypatch.setenv("VOXGRAPH_API_KEYS", "c")
    s = Settings()
    assert s.max_upload_mb == 4
    assert [k.get_secret_value() for k in s.api_keys] == ["c"]


def test_unprefixed_field_names_are_not_read(monkeypatch):
    # Only the documented names: a generic API_KEYS or CORS_ORIGINS meant for another
    # program in the same pod must not configure this one.
    monkeypatch.setenv("API_KEYS", "x")
    monkeypatch.setenv("CORS_ORIGINS", "https://elsewhere")
    monkeypatch.setenv("DIAR_WINDOW_S", "1")
    s = Settings()
    assert s.api_keys == [] and s.cors_origins == [] and s.diar_window_s == 90


def test_per_model_names_before_nesting_still_work(monkeypatch):
    monkeypatch.setenv("VOXGRAPH_DIARIZER_MODEL", "legacy.nemo")
    assert graph.VoxgraphArgs().diarizer.model == "legacy.nemo"
    # The nested name wins over the older one, and args over both.
    monkeypatch.setenv("VOXGRAPH_DIARIZER__MODEL", "nested.nemo")
    assert graph.VoxgraphArgs().diarizer.model == "nested.nemo"
    assert graph.VoxgraphArgs(diarizer={"model": "args.nemo"}).diarizer.model == "args.nemo"


# ------------------------------------------------------------------ nested environment


def test_nested_environment(monkeypatch):
    monkeypatch.setenv("VOXGRAPH_EMBEDDER__NUM_CPUS", "0.5")
    monkeypatch.setenv("VOXGRAPH_INGRESS__NUM_REPLICAS", "3")
    monkeypatch.setenv("VOXGRAPH_CPU_ONLY", "1")
    args = graph.VoxgraphArgs(embedder={"max_batch_size": 4})
    assert args.embedder.num_cpus == 0.5 and args.embedder.max_batch_size == 4
    assert args.embedder.model == graph.ROLE_DEFAULTS["embedder"]["model"]
    assert args.ingress.num_replicas == 3
    assert all(d.num_gpus == 0 for d in args.model_deployments().values())
    opts = graph.deployment_options(args.embedder)
    assert {k: opts["ray_actor_options"][k] for k in ("num_cpus", "num_gpus")} == {
        "num_cpus": 0.5,
        "num_gpus": 0.0,
    }
    # Serve's request path without its extra event loops (deployments/serve_env.py).
    env = opts["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert opts["user_config"]["max_batch_size"] == 4


def test_bad_environment_values_fail_loudly(monkeypatch):
    monkeypatch.setenv("VOXGRAPH_ASR__PRECISION", "int3")
    with pytest.raises(ValidationError, match="precision"):
        graph.VoxgraphArgs()
    monkeypatch.delenv("VOXGRAPH_ASR__PRECISION")
    monkeypatch.setenv("MAX_AUDIO_S", "-5")
    with pytest.raises(ValidationError, match=r"^.*\nmax_audio_s\n"):
        Settings()  # the field's name, though MAX_AUDIO_S was the variable set
    monkeypatch.delenv("MAX_AUDIO_S")
    for bad in ("0", "-30", "lots"):
        monkeypatch.setenv("VOXGRAPH_MAX_FINGERPRINT_SPEECH_S", bad)
        with pytest.raises(ValidationError, match="max_fingerprint_speech_s"):
            Settings()
    monkeypatch.delenv("VOXGRAPH_MAX_FINGERPRINT_SPEECH_S")
    monkeypatch.setenv("VOXGRAPH_DIARIZER__SDPA", "sometimes")
    with pytest.raises(ValidationError, match="sdpa"):
        graph.VoxgraphArgs()


def test_service_settings_are_read_by_the_ingress_not_the_builder(monkeypatch):
    # args.settings holds only what the config says; the ingress adds its own
    # environment when it builds Settings, so the config still wins there.
    monkeypatch.setenv("VOXGRAPH_SETTINGS__MAX_UPLOAD_MB", "1")
    monkeypatch.setenv("VOXGRAPH_MAX_UPLOAD_MB", "50")
    monkeypatch.setenv("VOXGRAPH_LINK_THRESHOLD", "0.7")
    args = graph.VoxgraphArgs(settings={"max_upload_mb": 8})
    assert args.settings == {"max_upload_mb": 8}
    s = Settings.load(args.settings)
    assert (s.max_upload_mb, s.link_threshold) == (8, 0.7)


def test_model_config_refuses_unknown_keys():
    # A misspelt key in a live user_config override fails instead of doing nothing.
    with pytest.raises(ValidationError, match="max_batch"):
        ModelConfig(model="m", max_batch=4)


# ------------------------------------------------------------------ secrets


def test_api_keys_never_print(monkeypatch, caplog):
    monkeypatch.setenv("VOXGRAPH_API_KEY", SECRET)
    for s in (Settings(), Settings.load({"api_keys": [SECRET]})):
        assert [k.get_secret_value() for k in s.api_keys] == [SECRET]
        logging.getLogger("voxgraph.test").warning("settings: %s / %r", s, s)
        shown = [
            repr(s),
            str(s),
            str(s.model_dump()),
            s.model_dump_json(),
            str(s.model_dump(mode="json")),
            caplog.text,
        ]
        for text in shown:
            assert SECRET not in text
        assert "**********" in s.model_dump_json()


def test_api_keys_given_as_args_stay_hidden():
    args = graph.VoxgraphArgs(settings={"api_keys": [SECRET], "max_upload_mb": 8})
    assert SECRET not in repr(args) and SECRET not in str(args.model_dump())
    s = Settings.load(args.settings)  # what the ingress does with them
    assert [k.get_secret_value() for k in s.api_keys] == [SECRET]
    assert s.max_upload_mb == 8


def test_api_keys_in_a_validation_error_stay_hidden():
    with pytest.raises(ValidationError) as err:
        Settings.load({"api_keys": [SECRET], "max_upload_mb": -1})
    assert SECRET not in str(err.value)


def test_serve_env_is_set_while_ray_starts_and_this_process_gets_its_own_back(monkeypatch):
    from deployments.serve_env import SERVE_ENV, for_ray_start

    for k in SERVE_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_SERVE_LOG_TO_STDERR", "1")  # an operator's choice wins
    with for_ray_start():
        assert os.environ["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0"
        assert os.environ["RAY_SERVE_LOG_TO_STDERR"] == "1"
    # A driver's synchronous handle calls need the router's own loop: nothing stays set.
    assert "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP" not in os.environ
    assert os.environ["RAY_SERVE_LOG_TO_STDERR"] == "1"
