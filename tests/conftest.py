"""Shared fixtures: configs written into tmp_path, runs of the agent, store readers."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
CASES = Path(__file__).resolve().parent / "cases"


def demo_config_text(**paths: str) -> str:
    """Return the demo config with its paths replaced by absolute ones (keyword per key)."""
    text = (EXAMPLES / "clicktrail.toml").read_text()
    text = text.replace('"ranges/', f'"{EXAMPLES / "ranges"}/')
    for key, value in paths.items():
        if key == "tracking_paths":
            text = text.replace('paths = ["logs/apache/tracking_rich.log*"]', f'paths = ["{value}"]')
        elif key == "mta_paths":
            text = text.replace('paths = ["logs/postfix/postfix.log*"]', f'paths = ["{value}"]')
        elif key == "log_format":
            text = re.sub(r"^log_format = .*$", f"log_format = {value}", text, count=1, flags=re.M)
        else:
            raise KeyError(key)
    return text


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder holding config, state, store and logs of one test."""
    for name in ("logs", "state", "store", "reports"):
        (tmp_path / name).mkdir()
    return tmp_path


def write_config(workdir: Path, text: str) -> Path:
    text = text.replace('state_dir = "../demo-output/state"', f'state_dir = "{workdir / "state"}"')
    text = text.replace('url = "../demo-output/store"', f'url = "{workdir / "store"}"')
    text = text.replace('output_dir = "../demo-output/reports"',
                        f'output_dir = "{workdir / "reports"}"')
    path = workdir / "clicktrail.toml"
    path.write_text(text)
    return path


def copy_logs(pattern: str, target: Path) -> None:
    """Copy example logs matching pattern (relative to examples/logs) into target."""
    for path in sorted((EXAMPLES / "logs").glob(pattern)):
        shutil.copy2(path, target / path.name)


def read_store(store: Path, area: str = "events") -> pa.Table:
    folder = store / area
    if not folder.exists():
        return pa.table({})
    return ds.dataset(folder, format="parquet", partitioning="hive").to_table()
