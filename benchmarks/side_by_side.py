"""Side by side on the same seeded emulator: this product, fast_bitrix24 + pandas + DuckDB, dlt's
``rest_api`` source -> DuckDB (issue 13).

Each contender runs in its own process against its own emulator process, seeded identically (same
seed, same counts), one after the other, on the same work:

1. full load of 20,000 deals with the standard plan's rate limits (burst 50, 2 requests/s): HTTP
   requests counted by the emulator, 503s among them;
2. full load of 100,000 deals, limits off: rows per CPU-second of the contender's process (CPU of
   the work itself, from before the first request to after the data is committed and the database
   closed; interpreter start and imports are left out for every contender alike);
3. on the warehouse of (1): 2,000 deals updated and 100 deleted by a portal user, then one change
   run: requests, and whether the deletions reached the warehouse;
4. full load of 1,000,000 deals by the product: peak RSS of its process (``--million-deals 0``
   leaves it out; the last line then says ``peak_rss_mb_1m=NA``).

Every result is checked against the emulator's ground truth (ids, modification times, titles,
deletions) and the table says so. The product runs its real code path, from its own script
(``peers/product_load.py``, so the process measured holds nothing of this harness): `connectors.sync.steps`
(``run_once``: reserve -> fetch -> commit -> ack) with ``full_resync`` for a full load and
``changes`` for the change run, typed, with history and upsert, into a DuckDB file, with a SQLite
state store (tokens, the portal's request bucket, the look-up cache) as deployed by default. The
peers are written as their users write them (``benchmarks/peers/``): fast_bitrix24's ``get_all`` without
``order`` into a DataFrame and one ``CREATE TABLE AS`` (untyped); dlt with Bitrix24's ``next``
cursor, no declared column types, ``replace`` then ``merge``; both follow changes by a
``>DATE_MODIFY`` high-water mark, which cannot see deletions.

The peers are not dependencies of the product: the script creates ``benchmarks/.venv-peers`` with
pip on first use (``--peers-venv`` to put it elsewhere).

Run: ``.venv/bin/python benchmarks/side_by_side.py`` (about 10 minutes on 2 cores; smaller figures
with ``--deals-requests``, ``--deals-cpu``, ``--million-deals``). Last line:
``requests_ratio_vs_fast_bitrix24=<x> cpu_ratio_vs_fast_bitrix24=<y> peak_rss_mb_1m=<z>``
(x: product requests / fast_bitrix24's in (1), lower is better; y: product rows per CPU-second /
fast_bitrix24's in (2), higher is better).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import venv
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from emulator.testing import RunningEmulator, run_emulator_process  # noqa: E402

PORTAL = "default"
SEED = 13
PEERS = Path(__file__).resolve().parent / "peers"
PEER_PACKAGES = ("fast_bitrix24==1.8.14", "dlt[duckdb]==1.31.0", "pandas", "duckdb")
PRODUCT, FAST, DLT = "this product", "fast_bitrix24 + pandas + DuckDB", "dlt rest_api -> DuckDB"
CONTENDERS = (PRODUCT, FAST, DLT)


@dataclass
class Outcome:
    """One contender on one piece of work."""

    requests: int = 0
    refused_503: int = 0
    rows: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    correct: bool = False
    problems: list[str] = field(default_factory=list)
    deletes_caught: bool | None = None

    @property
    def rows_per_cpu_s(self) -> float:
        return self.rows / self.cpu_s if self.cpu_s else 0.0


# --- the product, in a child process (`peers/product_load.py`) ------------------------------------


def run_product(emu: RunningEmulator, work_dir: Path, mode: str, limits: str) -> Outcome:
    state = work_dir / "state.sqlite3"
    if not state.exists():
        from connectors.state import open_state_store

        with open_state_store(state) as store:
            store.save_token(PORTAL, emu.install_tokens())
    staging = work_dir / f"staging-{mode}"
    return _child(emu, [sys.executable, str(PEERS / "product_load.py"), "--mode", mode,
                        "--limits", limits, "--token-url", emu.token_url, "--client-id", emu.client_id,
                        "--client-secret", emu.client_secret, "--state-store", str(state),
                        "--warehouse", str(work_dir / "product.duckdb"), "--staging", str(staging)])


# --- the peers, in their own venv ----------------------------------------------------------------


def peers_python(venv_dir: Path) -> Path:
    """The peers' interpreter, creating the venv and installing fast_bitrix24 and dlt the first time."""
    python = venv_dir / "bin" / "python"
    marker = venv_dir / ".installed"
    if marker.exists() and marker.read_text() == "\n".join(PEER_PACKAGES):
        return python
    print(f"installing the peers into {venv_dir} ({', '.join(PEER_PACKAGES)}) ...", flush=True)
    venv.create(venv_dir, with_pip=True, clear=True)
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES],
                               capture_output=True, text=True)
    if installed.returncode != 0:
        raise RuntimeError(f"pip could not install the peers:\n{installed.stderr[-4000:]}")
    marker.write_text("\n".join(PEER_PACKAGES))
    return python


def run_fast_bitrix24(emu: RunningEmulator, python: Path, work_dir: Path, work: str, since: str = "") -> Outcome:
    return _child(emu, [str(python), str(PEERS / "fast_bitrix24_load.py"), "--webhook", emu.webhook_url,
                        "--db", str(work_dir / "fast_bitrix24.duckdb"), "--work", work, "--since", since])


def run_dlt(emu: RunningEmulator, python: Path, work_dir: Path, work: str, since: str = "") -> Outcome:
    return _child(emu, [str(python), str(PEERS / "dlt_load.py"), "--webhook", emu.webhook_url,
                        "--db", str(work_dir / "dlt.duckdb"), "--work", work, "--since", since,
                        "--pipelines-dir", str(work_dir / "dlt-pipelines")])


def _child(emu: RunningEmulator, command: list[str]) -> Outcome:
    emu.reset_stats()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(command[1]).name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    stats = emu.stats()
    return Outcome(requests=stats["http_requests"],
                   refused_503=sum(method.get("status_503", 0) for method in stats["methods"].values()),
                   rows=int(figures["rows"]), cpu_s=figures["cpu_s"], wall_s=figures["wall_s"],
                   peak_rss_mb=figures["peak_rss_mb"])


# --- ground truth --------------------------------------------------------------------------------


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text).astimezone(UTC) if text else None


def check_product(emu: RunningEmulator, work_dir: Path, outcome: Outcome, deleted: list[int]) -> None:
    from tests.ground_truth import compare, duckdb_rows

    outcome.problems = compare(emu, duckdb_rows(str(work_dir / "product.duckdb"), PORTAL))
    outcome.correct = not outcome.problems
    if deleted:
        with duckdb.connect(str(work_dir / "product.duckdb"), read_only=True) as con:
            tombstoned = con.execute("SELECT count(*) FROM deals WHERE _deleted_at IS NOT NULL AND id IN "
                                     "(SELECT unnest($ids))", {"ids": deleted}).fetchone()[0]
        outcome.deletes_caught = tombstoned == len(deleted)


def check_peer(emu: RunningEmulator, database: Path, relation: str, names: tuple[str, str, str],
               outcome: Outcome, deleted: list[int]) -> None:
    """``names``: the peer's columns for ID, DATE_MODIFY and TITLE (text, as loaded)."""
    id_column, modified_column, title_column = names
    with duckdb.connect(str(database), read_only=True) as con:
        stored = {int(row[0]): row[1:] for row in con.execute(
            f"SELECT {id_column}, CAST({modified_column} AS VARCHAR), {title_column} FROM {relation}").fetchall()}
    truth = {row["id"]: row for row in emu.truth("deal")}
    live = {i: row for i, row in truth.items() if not row["deleted"]}
    missing = [i for i in live if i not in stored]
    stale = [i for i, row in live.items() if i in stored and (
        _moment(stored[i][0]) != _moment(row["modified"]) or stored[i][1] != row["fields"].get("TITLE"))]
    gone = [i for i in stored if i not in live]
    for label, found in (("missing", missing), ("stale", stale), ("deleted in the portal, still live", gone)):
        if found:
            outcome.problems.append(f"deals: {len(found)} {label}, e.g. {sorted(found)[:5]}")
    outcome.correct = not outcome.problems
    if deleted:
        outcome.deletes_caught = not any(i in stored for i in deleted)


# --- the work ------------------------------------------------------------------------------------


def emulator(deals: int, *, limits: bool):
    return run_emulator_process(limits=limits, plan="professional", seed=SEED, smart_process_types=0,
                                counts={"deal": deals, "contact": 0, "company": 0, "lead": 0, "activity": 0,
                                        "item": 0})


def change_set(emu: RunningEmulator, deals: int, updates: int, deletes: int) -> list[int]:
    """The same portal-user edits on every contender's emulator; returns the deleted ids."""
    step = max(1, deals // (updates + deletes))
    ids = list(range(1, deals + 1, step))[:updates + deletes]
    for number, entity_id in enumerate(ids[:updates]):
        emu.write("deal", "update", entity_id, {"TITLE": f"Renamed deal {entity_id} ({number})"})
    for entity_id in ids[updates:]:
        emu.write("deal", "delete", entity_id)
    return ids[updates:]


def high_water_mark(emu: RunningEmulator) -> str:
    """What a peer's incremental load filters on: the latest DATE_MODIFY it has loaded."""
    return max((row["modified"] for row in emu.truth("deal")), key=_moment)


PEER_COLUMNS = {FAST: ("fast_bitrix24.duckdb", "deals", ("ID", "DATE_MODIFY", "TITLE")),
                DLT: ("dlt.duckdb", "crm.deals", ("id", "date_modify", "title"))}


def requests_and_changes(contender: str, python: Path, args: argparse.Namespace
                         ) -> tuple[Outcome, Outcome]:
    with emulator(args.deals_requests, limits=True) as emu, tempfile.TemporaryDirectory() as tmp:
        work_dir = Path(tmp)
        if contender == PRODUCT:
            full = run_product(emu, work_dir, "full_resync", "standard")
            check_product(emu, work_dir, full, [])
        else:
            full = (run_fast_bitrix24 if contender == FAST else run_dlt)(emu, python, work_dir, "full")
            database, relation, names = PEER_COLUMNS[contender]
            check_peer(emu, work_dir / database, relation, names, full, [])
        since = high_water_mark(emu)
        time.sleep(1.1)  # Bitrix24 times have one-second resolution: the edits come after the mark
        deleted = change_set(emu, args.deals_requests, args.updates, args.deletes)
        if contender == PRODUCT:
            changes = run_product(emu, work_dir, "changes", "standard")
            check_product(emu, work_dir, changes, deleted)
        else:
            changes = (run_fast_bitrix24 if contender == FAST else run_dlt)(emu, python, work_dir, "changes", since)
            database, relation, names = PEER_COLUMNS[contender]
            check_peer(emu, work_dir / database, relation, names, changes, deleted)
    return full, changes


def cpu_load(contender: str, python: Path, deals: int) -> Outcome:
    with emulator(deals, limits=False) as emu, tempfile.TemporaryDirectory() as tmp:
        work_dir = Path(tmp)
        if contender == PRODUCT:
            outcome = run_product(emu, work_dir, "full_resync", "none")
            check_product(emu, work_dir, outcome, [])
        else:
            outcome = (run_fast_bitrix24 if contender == FAST else run_dlt)(emu, python, work_dir, "full")
            database, relation, names = PEER_COLUMNS[contender]
            check_peer(emu, work_dir / database, relation, names, outcome, [])
    return outcome


# --- report --------------------------------------------------------------------------------------


def _verdict(outcome: Outcome) -> str:
    return "ok" if outcome.correct else "WRONG: " + "; ".join(outcome.problems)[:120]


def report(results: dict[str, dict[str, Outcome]], args: argparse.Namespace, million: Outcome | None) -> None:
    full, cpu, changes = (f"full load, {args.deals_requests:,} deals, standard limits: HTTP requests",
                          f"full load, {args.deals_cpu:,} deals, no limits: rows per CPU-second",
                          f"{args.updates:,} updates + {args.deletes:,} deletes: requests / deletes caught")
    print(f"\nside by side, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
          f"{platform.python_implementation()} {platform.python_version()}, seed {SEED}\n")
    print(f"| work (emulator, one run) | {' | '.join(CONTENDERS)} |")
    print("|---|" + "---|" * len(CONTENDERS))

    def row(label: str, cell) -> None:
        print(f"| {label} | {' | '.join(cell(results[c]) for c in CONTENDERS)} |")

    row(full, lambda r: f"{r['full'].requests:,}" + (f" ({r['full'].refused_503} refused with 503)"
                                                      if r["full"].refused_503 else ""))
    row(cpu, lambda r: f"{r['cpu'].rows_per_cpu_s:,.0f} ({r['cpu'].rows:,} rows, {r['cpu'].cpu_s:.2f} CPU-s)")
    row(changes, lambda r: f"{r['changes'].requests:,} / {'yes' if r['changes'].deletes_caught else 'no'}")
    row(f"peak RSS of the {args.deals_cpu:,}-deal load, MB", lambda r: f"{r['cpu'].peak_rss_mb:,.0f}")
    row("result equals the ground truth (full / cpu / changes)",
        lambda r: " / ".join(_verdict(r[w]) for w in ("full", "cpu", "changes")))
    if million is not None:
        print(f"| full load, {args.million_deals:,} deals: peak RSS | {million.peak_rss_mb:,.0f} MB "
              f"({_verdict(million)}, {million.cpu_s:.0f} CPU-s) | — | — |")
    product, fast, dlt_ = (results[c] for c in CONTENDERS)
    print("\nratios (this product / peer):")
    for name, peer in (("fast_bitrix24", fast), ("dlt", dlt_)):
        print(f"  vs {name}: requests {product['full'].requests / peer['full'].requests:.2f}x, "
              f"rows per CPU-second {product['cpu'].rows_per_cpu_s / peer['cpu'].rows_per_cpu_s:.2f}x, "
              f"change-run requests {product['changes'].requests / max(1, peer['changes'].requests):.2f}x")
    rss = f"{million.peak_rss_mb:.0f}" if million is not None else "NA"
    print(f"requests_ratio_vs_fast_bitrix24={product['full'].requests / fast['full'].requests:.2f} "
          f"cpu_ratio_vs_fast_bitrix24={product['cpu'].rows_per_cpu_s / fast['cpu'].rows_per_cpu_s:.2f} "
          f"peak_rss_mb_1m={rss}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals-requests", type=int, default=20_000)
    parser.add_argument("--deals-cpu", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=2_000)
    parser.add_argument("--deletes", type=int, default=100)
    parser.add_argument("--million-deals", type=int, default=1_000_000, help="0 leaves the memory run out")
    parser.add_argument("--peers-venv", type=Path, default=Path(__file__).resolve().parent / ".venv-peers")
    args = parser.parse_args()
    python = peers_python(args.peers_venv)
    results: dict[str, dict[str, Outcome]] = {}
    for contender in CONTENDERS:
        print(f"{contender}: full load and change run with limits ...", flush=True)
        full, changes = requests_and_changes(contender, python, args)
        print(f"{contender}: full load without limits ...", flush=True)
        results[contender] = {"full": full, "changes": changes, "cpu": cpu_load(contender, python, args.deals_cpu)}
    million = None
    if args.million_deals:
        print(f"{PRODUCT}: full load of {args.million_deals:,} deals ...", flush=True)
        million = cpu_load(PRODUCT, python, args.million_deals)
    report(results, args, million)


if __name__ == "__main__":
    main()
