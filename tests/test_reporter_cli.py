"""clicktrail-report nightly: exit codes and messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from clicktrail.reporter.cli import EXIT_CONFIG, main

from tests.reporter_fixtures import build_sample_store

pytestmark = pytest.mark.filterwarnings(
    "ignore:HarfBuzz-Subset will be required:DeprecationWarning")


def write_config(tmp_path: Path, store_url: str, extra: str = "") -> Path:
    path = tmp_path / "clicktrail.toml"
    path.write_text(
        f'[store]\nurl = "{store_url}"\n\n'
        f'[report]\ntimezone = "Europe/Paris"\noutput_dir = "{tmp_path / "reports"}"\n{extra}',
        encoding="utf-8",
    )
    return path


def test_nightly_prints_index_path(tmp_path: Path) -> None:
    build_sample_store(tmp_path / "store")
    config = write_config(tmp_path, (tmp_path / "store").as_uri())

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date", "2026-12-03"])

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "reports" / "2026-12-03" / "index.html")
    assert (tmp_path / "reports" / "2026-12-03" / "delivery-d1.pdf").is_file()


def test_nightly_missing_store_exit_1(tmp_path: Path) -> None:
    config = write_config(tmp_path, str(tmp_path / "nowhere"))

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date", "2026-12-03"])

    assert result.exit_code == 1
    assert "Error: store not found:" in result.stderr
    assert "Traceback" not in result.output


def test_nightly_invalid_config_exit_78(tmp_path: Path) -> None:
    config = write_config(tmp_path, str(tmp_path), extra="lookback_days = 0\n")

    result = CliRunner().invoke(main, ["nightly", "--config", str(config)])

    assert result.exit_code == EXIT_CONFIG
    assert "lookback_days" in result.stderr


def test_nightly_invalid_date_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, str(tmp_path))

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date", "03/12/2026"])

    assert result.exit_code == 2
    assert "Invalid value for '--date'" in result.stderr
