"""The embedded stack's state folder: databases, tokens and annotations, readable by the owner only."""

from __future__ import annotations

import stat
from pathlib import Path

from labelloop.dev.stack import free_port, labelstudio_server, mlflow_server, state_folder


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_folders_are_created_private(tmp_path: Path) -> None:
    state = tmp_path / "state"  # as LABELLOOP_STATE_DIR names it: not there yet
    data = state_folder(state, "labelstudio", "media")
    assert data == state / "labelstudio" / "media"
    assert [mode(folder) for folder in (state, state / "labelstudio", data)] == [0o700] * 3


def test_the_servers_make_their_folders_private_even_if_they_exist(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "labelstudio").mkdir(parents=True)
    for folder in (state, state / "labelstudio"):
        folder.chmod(0o755)  # what an older labelloop left
    labelstudio_server(state, free_port())  # builds the server (no process is started)
    mlflow_server(state, free_port())
    assert {name: mode(state / name) for name in ("", "labelstudio", "mlflow")} == {
        "": 0o700, "labelstudio": 0o700, "mlflow": 0o700}
