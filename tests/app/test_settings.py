"""Settings errors name the variable and never echo its value: API keys are secrets."""

import json
import subprocess
import sys

import pytest

from app.settings import SettingsInvalid, get_settings

SECRET = "sekrit-key-0123456789"


@pytest.fixture(autouse=True)
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("value", [SECRET, f'{{"a": "{SECRET}"}}', f'[["{SECRET}"]]', f'"{SECRET}"', f'["{SECRET}", 5'])
def test_a_malformed_key_list_is_refused_without_showing_the_key(monkeypatch, value):
    monkeypatch.setenv("COVERID_API_KEYS", value)
    with pytest.raises(SettingsInvalid) as raised:
        get_settings()
    assert "API_KEYS" in str(raised.value).upper() and SECRET not in str(raised.value)


@pytest.mark.parametrize("keys", [["", SECRET], [SECRET, "   "], ["\t\n"]], ids=["empty", "spaces", "whitespace only"])
def test_an_empty_key_is_refused_without_showing_the_others(monkeypatch, keys):
    monkeypatch.setenv("COVERID_API_KEYS", json.dumps(keys))  # an empty key let requests without one through
    with pytest.raises(SettingsInvalid) as raised:
        get_settings()
    assert "COVERID_API_KEYS" in str(raised.value) and "empty" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_requiring_a_key_for_identify_needs_a_key(monkeypatch):
    monkeypatch.setenv("COVERID_IDENTIFY_REQUIRES_KEY", "true")  # without keys, no request ever needs one
    with pytest.raises(SettingsInvalid, match="COVERID_IDENTIFY_REQUIRES_KEY.*COVERID_API_KEYS"):
        get_settings()
    monkeypatch.setenv("COVERID_API_KEYS", json.dumps([SECRET]))
    assert get_settings().identify_requires_key


def test_a_bad_number_names_its_variable(monkeypatch):
    monkeypatch.setenv("COVERID_K_NEIGHBOURS", "many")
    with pytest.raises(SettingsInvalid, match="COVERID_K_NEIGHBOURS: Input should be a valid integer"):
        get_settings()


def test_serve_with_a_malformed_key_list_exits_with_a_message_and_no_secret():
    done = subprocess.run([sys.executable, "-m", "app.cli", "serve"], capture_output=True, text=True, timeout=120,
                          env={"COVERID_API_KEYS": f'{{"a": "{SECRET}"}}', "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "COVERID_API_KEYS" in done.stderr and SECRET not in done.stderr + done.stdout


def test_serve_with_an_empty_key_exits_with_a_message_and_no_secret(tmp_path):
    env = {"COVERID_API_KEYS": json.dumps(["", SECRET]), "COVERID_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "app.cli", "serve"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 2
    assert "COVERID_API_KEYS" in done.stderr and SECRET not in done.stderr + done.stdout


def test_a_whole_track_is_a_valid_query_by_default(monkeypatch):
    monkeypatch.setenv("COVERID_MAX_TRACK_SECONDS", "900")
    assert get_settings().max_clip_seconds == 900  # a 38-of-160 refusal rate on full-track queries before


def test_an_explicit_clip_limit_is_kept(monkeypatch):
    monkeypatch.setenv("COVERID_MAX_CLIP_SECONDS", "60")
    assert get_settings().max_clip_seconds == 60


def test_the_calibration_is_looked_for_beside_the_model_unless_set(monkeypatch, tmp_path):
    monkeypatch.setenv("COVERID_MODEL_PATH", str(tmp_path / "mine" / "extractor.pt"))
    assert get_settings().decision_calibration == tmp_path / "mine" / "calibration.json"
    get_settings.cache_clear()
    monkeypatch.setenv("COVERID_CALIBRATION_PATH", str(tmp_path / "fit.json"))
    assert get_settings().decision_calibration == tmp_path / "fit.json"
    get_settings.cache_clear()
    monkeypatch.setenv("COVERID_FALSE_MATCH_RATE", "1.5")
    with pytest.raises(SettingsInvalid, match="COVERID_FALSE_MATCH_RATE"):
        get_settings()
