"""Workers sharing a campaign through a send log on PostgreSQL (a throwaway server, fsync on):
1, 2 and 4 `mailer send` processes, 4 connections each, into smtp-sink through send.py's
proxy (10 ms each way). See README.md."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import common as c
import psycopg

sys.path.insert(0, str(c.ROOT / "tests"))
from pg import start_server, stop_server  # the tests' throwaway server

SEND = Path(__file__).with_name("send.py")


def _span(url: str) -> float:
    """Seconds from the campaign's first try to its last letter's."""
    with psycopg.connect(url) as db:
        first, last = db.execute("SELECT min(first_attempt), max(last_attempt) FROM letters "
                                 "WHERE status = 'sent'").fetchone() or (None, None)
    return (datetime.fromisoformat(str(last)) - datetime.fromisoformat(str(first))
            ).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--letters", type=int, default=960)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    sink_port, port = c.free_port(), c.free_port()
    c.write_inputs(base, args.letters, port)
    sink = c.start_sink(sink_port)
    proxy = subprocess.Popen([sys.executable, str(SEND), "proxy", str(port), str(sink_port)])
    c.wait_port(port)
    server = start_server()
    with server.admin() as admin:  # the tests' server skips fsync; a real one does not
        admin.execute("ALTER SYSTEM SET fsync = on")
        admin.execute("SELECT pg_reload_conf()")
    wall: dict[int, list[float]] = {n: [] for n in (1, 2, 4)}
    span: dict[int, list[float]] = {n: [] for n in (1, 2, 4)}
    try:
        for _ in range(args.runs):
            for workers in wall:
                url = server.url(server.create_database())
                env = c.mailer_env(port, 4, url)
                started = time.perf_counter()
                running = [subprocess.Popen([str(c.BIN / "mailer"), "send", "--yes"], cwd=base,
                                            env=env, stdout=subprocess.DEVNULL)
                           for _ in range(workers)]
                if any(worker.wait() for worker in running):
                    sys.exit(f"a worker failed ({workers} workers)")
                wall[workers].append(args.letters / (time.perf_counter() - started))
                span[workers].append(args.letters / _span(url))
    finally:
        stop_server(server)
        proxy.terminate()
        sink.terminate()
        shutil.rmtree(base)
    c.table(f"{args.letters:,} letters through a 20 ms round trip, {args.runs} rounds "
            "(min / median / max)",
            ["workers", "letters/s, start to last exit", "letters/s while sending",
             "x 1 worker (while sending)"],
            [[str(n), c.spread(wall[n], 1), c.spread(span[n], 1),
              c.spread([b / a for a, b in zip(span[1], span[n], strict=True)], 2)]
             for n in wall])


if __name__ == "__main__":
    main()
