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
