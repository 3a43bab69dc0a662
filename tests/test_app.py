"""The Streamlit app: pages run, bad input keeps the session, engines never import Streamlit."""
import ast
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]


def test_engines_never_import_streamlit():
    offenders = []
    for pkg in ("mudsc", "landscape"):
        for f in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n.split(".")[0] == "streamlit" for n in names):
                    offenders.append(str(f.relative_to(REPO)))
    assert offenders == []


def test_parents_page_empty_then_bad_path_keeps_state(demo_parents):
    from mudsc.studio import load_parent

    at = AppTest.from_file(str(REPO / "pages" / "parents.py"))
    at.run(timeout=60)
    assert not at.exception
    assert any("No parents loaded" in i.value for i in at.info)
    kept = load_parent(str(demo_parents[0]), dataset="digits")
    at.session_state["parents"] = [kept]
    at.text_input(key="ckpt_path").set_value("/does/not/exist.safetensors").run(timeout=60)
    at.button(key="add_parent").click().run(timeout=60)
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)
    assert len(at.session_state["parents"]) == 1  # the loaded parent survived the bad action
    table = at.dataframe[0].value
    assert table["own-task accuracy"].iloc[0] > 0.9


@pytest.mark.slow
def test_demo_button_loads_both_parents():
    at = AppTest.from_file(str(REPO / "pages" / "parents.py"))
    at.run(timeout=60)
    at.button(key="load_demo").click().run(timeout=240)
    assert not at.exception
    parents = at.session_state["parents"]
    assert [tuple(p.model.classes) for p in parents] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert all(p.task_acc[",".join(map(str, p.model.classes))] > 0.9 for p in parents)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_server_health():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )
    try:
        body = ""
        for _ in range(60):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(1)
        assert body == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
