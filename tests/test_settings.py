from pathlib import Path

import pytest

from service.settings import REPO_ROOT, Settings
from service.settings_table import readme_with_table


def test_readme_settings_table_is_current():
    readme = Path(REPO_ROOT / "README.md").read_text()
    assert readme == readme_with_table(readme), "run: python -m service.settings_table --write"


def test_env_prefix_and_validation(monkeypatch):
    monkeypatch.setenv("TIPO_PORT", "9123")
    monkeypatch.setenv("TIPO_ENGINE", "scripted")
    settings = Settings()
    assert settings.port == 9123 and settings.engine == "scripted"
    monkeypatch.setenv("TIPO_PORT", "0")
    with pytest.raises(ValueError):
        Settings()


def test_allowed_profiles_are_checked_and_include_the_default(monkeypatch):
    assert Settings().allowed_profile_names == ("fixed", "kgen")
    monkeypatch.setenv("TIPO_ALLOWED_PROFILES", " fixed ")
    assert Settings().allowed_profile_names == ("fixed",)
    assert Settings(_cli_parse_args=["--allowed_profiles", "kgen", "--default_profile", "kgen"]
                    ).allowed_profile_names == ("kgen",)
    with pytest.raises(ValueError, match="default_profile 'kgen' is not in allowed_profiles"):
        Settings(default_profile="kgen")
    for bad in ("fixd", "", " , "):
        with pytest.raises(ValueError, match="allowed_profiles must name one or more of fixed, kgen"):
            Settings(allowed_profiles=bad)
