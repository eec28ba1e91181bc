"""`make demo` (pipelines.demo): every start is consistent with the freshly seeded emulator, and one
stop signal stops every child exactly once, grandchildren included, leaving no port held.

The supervisor is driven for real, in a process of its own, with cheap Python children standing in for
the receiver, the emulator and `dagster dev` (whose webserver is a grandchild holding the UI port).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from pipelines.demo import (
    REPO,
    Processes,
    StopRequested,
    _process_table,
    free_port,
    prepare_state_dir,
    wait_for,
)


def _earlier_demo(state_dir: Path) -> None:
    """What a demo leaves behind: a real DuckDB warehouse and snapshot, a state store, Dagster home, logs."""
    (state_dir / "dagster_home" / "storage").mkdir(parents=True)
    (state_dir / "dagster_home" / "storage" / "runs.db").write_text("runs")
    (state_dir / "staging" / "portal").mkdir(parents=True)
    (state_dir / "logs").mkdir()
    (state_dir / "logs" / "dagster.log").write_text("earlier run\n")
    for name in ("warehouse.duckdb", "warehouse.snapshot.duckdb"):
        with duckdb.connect(str(state_dir / name)) as connection:
            connection.execute("create table deals as select 1 as id")
    (state_dir / "state.sqlite3").write_bytes(b"tokens")
    (state_dir / "state.sqlite3-wal").write_bytes(b"")
    (state_dir / "notes.txt").write_text("not the demo's")


def test_a_second_demo_start_removes_the_earlier_warehouse_state_store_and_dagster_home(tmp_path: Path) -> None:
    _earlier_demo(tmp_path)

    note = prepare_state_dir(tmp_path, keep_state=False)

    assert note.startswith(f"Fresh start: removed the earlier demo's state from {tmp_path}")
    assert "--keep-state keeps it" in note
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dagster_home", "logs", "notes.txt"]
    assert [path.name for path in (tmp_path / "dagster_home").iterdir()] == ["dagster.yaml"]
    assert (tmp_path / "logs" / "dagster.log").read_text() == "earlier run\n"


def test_keep_state_keeps_the_earlier_warehouse(tmp_path: Path) -> None:
    _earlier_demo(tmp_path)

    note = prepare_state_dir(tmp_path, keep_state=True)

    assert "(--keep-state)" in note
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as connection:
        assert connection.execute("select id from deals").fetchall() == [(1,)]
    assert (tmp_path / "dagster_home" / "storage" / "runs.db").read_text() == "runs"
    assert (tmp_path / "state.sqlite3").read_bytes() == b"tokens"


def test_a_first_start_creates_the_state_directory_and_says_it_is_fresh(tmp_path: Path) -> None:
    state_dir = tmp_path / "new"

    assert prepare_state_dir(state_dir, keep_state=False) == f"Fresh start in {state_dir}."
    assert (state_dir / "dagster_home" / "dagster.yaml").read_text() == \
        (REPO / "pipelines" / "dagster.yaml").read_text()


def test_waiting_for_a_component_gives_way_to_a_stop_request(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(StopRequested):
            wait_for(f"http://127.0.0.1:{free_port()}/health", 30, sleeper, lambda: True)
    finally:
        sleeper.kill()
        sleeper.wait()


# A child records every stop signal it receives, then exits on it; "<record>.ready" says it listens for
# them. With a port, it first starts a grandchild that leaves its session, ignores SIGINT and listens on
# the port, as a stubborn webserver would.
CHILD = textwrap.dedent("""
    import signal, subprocess, sys, time
    record, port, grandchild = sys.argv[1], sys.argv[2], sys.argv[3]
    def on_signal(signum, frame):
        with open(record, "a") as out:
            out.write(signal.Signals(signum).name + "\\n")
        sys.exit(0)
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, on_signal)
    if port != "0":
        subprocess.Popen([sys.executable, "-c", grandchild, port, record + ".listening"], start_new_session=True)
    open(record + ".ready", "w").close()
    while True:
        time.sleep(0.05)
""")
GRANDCHILD = textwrap.dedent("""
    import os, signal, socket, sys, time
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = socket.socket()
    server.bind(("127.0.0.1", int(sys.argv[1])))
    server.listen()
    with open(sys.argv[2] + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
    while True:
        time.sleep(1)
""")
SUPERVISOR = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from pipelines.demo import Processes
    log_dir, port, child, grandchild = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    processes = Processes(log_dir, grace_s=3)
    processes.handle_stop_signals()
    try:
        for name, child_port in (("receiver", "0"), ("emulator", "0"), ("dagster", port)):
            processes.start(name, [sys.executable, "-c", child, str(log_dir / f"{name}.signals"), child_port,
                                   grandchild], dict(os.environ))
        print("ready", flush=True)
        print(processes.wait(poll_s=0.05), flush=True)
    finally:
        processes.stop()
    print("stopped", flush=True)
""")


def _wait_for_file(path: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.05)


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("first_signal", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_one_stop_signal_stops_every_child_once_and_frees_the_ui_port(
        tmp_path: Path, first_signal: signal.Signals) -> None:
    port = free_port()
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(tmp_path), str(port), CHILD, GRANDCHILD],
                                  cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert supervisor.stdout.readline() == "ready\n"
        for name in ("receiver", "emulator", "dagster"):
            _wait_for_file(tmp_path / f"{name}.signals.ready")
        _wait_for_file(tmp_path / "dagster.signals.listening")
        webserver = int((tmp_path / "dagster.signals.listening").read_text())
        assert not _port_is_free(port)

        # The first signal stops; a second and third one (an impatient user) must not stop anything twice.
        for stop_signal in (first_signal, signal.SIGTERM, signal.SIGINT):
            supervisor.send_signal(stop_signal)
            time.sleep(0.05)
        output, _ = supervisor.communicate(timeout=60)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()

    assert supervisor.returncode == 0
    assert output.splitlines() == [f"stopping on {first_signal.name}", "stopped"]
    for name in ("receiver", "emulator", "dagster"):
        assert (tmp_path / f"{name}.signals").read_text() == "SIGINT\n", name
    assert webserver not in _process_table()
    assert _port_is_free(port)


def test_stop_is_idempotent_and_signals_a_group_whose_leader_already_exited(tmp_path: Path) -> None:
    processes = Processes(tmp_path, grace_s=3)
    record = tmp_path / "quick.signals"
    quick = processes.start("quick", [sys.executable, "-c", "pass"], dict(os.environ))
    quick.wait()
    lasting = processes.start("lasting", [sys.executable, "-c", CHILD, str(record), "0", ""], dict(os.environ))
    _wait_for_file(tmp_path / "quick.signals.ready")

    processes.stop()
    processes.stop()

    assert record.read_text() == "SIGINT\n"
    assert lasting.returncode == 0
