"""Live sends into smtp-sink. By default: mailer's CLI at 1, 4 and 16 connections, mailmerge and
smtp-source, each once a round. --latency: mailer's library through a proxy adding 10 ms each
way, log off / on, each pair in turns (A B, then B A). See README.md."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import common as c

SIZE = 2564  # bytes of the first letter as mailer writes it
DELAY = 0.010
LIMIT = 1 / (4 * 2 * DELAY)  # letters/s per connection: MAIL, RCPT, DATA, the dot
CONNECTIONS = (1, 4, 16)


def loopback(base: Path, port: int, runs: int, count: int) -> None:
    wall: defaultdict[str, list[float]] = defaultdict(list)  # letters/s, start to exit
    net: defaultdict[str, list[float]] = defaultdict(list)  # letters/s, net of start-up
    mm = [str(c.BIN / "mailmerge"), "--no-dry-run", "--template", "mm.txt", "--database",
          "recipients.csv", "--config", "mm.conf"]
    for _ in range(runs):
        for n in CONNECTIONS:
            log = base / f"log-{time.time_ns()}.sqlite3"  # a fresh log each run
            seconds, _, out = c.run([str(c.BIN / "mailer"), "send", "--yes"], base,
                                    c.mailer_env(port, n, str(log)), keep=True)
            wall[f"mailer {n}"].append(count / seconds)
            net[f"mailer {n}"].append(c.done_rate(out))  # the sending part alone
        start = c.run([*mm, "--limit", "0"], base)[0]
        seconds = c.run([*mm, "--no-limit"], base)[0]
        wall["mailmerge"].append(count / seconds)
        net["mailmerge"].append(count / (seconds - start))
        for n in CONNECTIONS:
            for keep in ([], ["-d"]):
                seconds = c.run([str(c.POSTFIX), "smtp-source", *keep, "-s", str(n), "-m",
                                 str(count), "-l", str(SIZE), "-f", "a@example.org", "-t",
                                 "b@example.org", f"127.0.0.1:{port}"], base)[0]
                wall[" ".join(["smtp-source -s", str(n), *keep])].append(count / seconds)

    def ratio(table: dict[str, list[float]], name: str) -> str:  # paired by round
        if name not in table or name == "mailmerge":
            return "-"
        return c.spread([a / b for a, b in zip(table[name], table["mailmerge"], strict=True)], 2)

    c.table(f"{count:,} letters into smtp-sink, {runs} rounds (min / median / max)",
            ["", "letters/s", "letters/s net of start-up", "x mailmerge", "x mailmerge net"],
            [[name, c.spread(values, 0), c.spread(net[name], 0) if name in net else "-",
              ratio(wall, name), ratio(net, name)] for name, values in wall.items()])


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction, each chunk written DELAY after it was read (timers keep the order:
    each read is later than the one before)."""
    loop = asyncio.get_running_loop()
    while data := await reader.read(65536):
        loop.call_later(DELAY, writer.write, data)
    loop.call_later(DELAY, writer.close)


async def _proxy(listen: int, target: int) -> None:
    async def connected(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w),
                             return_exceptions=True)

    server = await asyncio.start_server(connected, "127.0.0.1", listen)
    await server.serve_forever()


def _child(count: int, log_on: bool) -> None:
    """One send with mailer's library, settings from the environment; prints the outcomes'
    counts and the sender's seconds."""
    from mailer.campaign import Campaign
    from mailer.recorder import Recorder
    from mailer.sender import Sender, SendSummary
    from mailer.sendlog import Listed
    from mailer.settings import load_settings
    from mailer.sqlitelog import SQLiteLog

    settings = load_settings()
    campaign = Campaign(settings, Path("recipients.csv"), Path("templates/letter.txt"))
    letters = list(campaign.letters())[:count]  # built before timing

    async def send() -> SendSummary:
        log = SQLiteLog.open(Path(settings.log))
        run = log.begin_run("bench", {}, "x")
        log.register("bench", [Listed(x.email, x.line, x.message_id) for x in letters], "x")
        async with contextlib.AsyncExitStack() as stack:
            recorder = await stack.enter_async_context(Recorder(log, run)) if log_on else None
            sender = Sender(settings, recorder)
            async for _ in sender.send(letters, asyncio.Event()):
                pass
        log.end_run(run, "completed", {})
        log.close()  # log off: opened and registered as well, but not used while sending
        return sender.summary

    summary = asyncio.run(send())
    print(json.dumps({"counts": dict(summary.counts), "elapsed": summary.elapsed}))


def latency(base: Path, sink_port: int, runs: int, per_connection: int) -> None:
    """mailer's library through the proxy, log off (A) / on (B): `per_connection` letters a
    connection."""
    port = c.free_port()
    proxy = subprocess.Popen([sys.executable, __file__, "proxy", str(port), str(sink_port)])
    c.wait_port(port)
    rates: dict[str, tuple[list[float], list[float]]] = {
        f"{n} connection(s)": ([], []) for n in CONNECTIONS}
    try:
        for round_ in range(runs):
            for n, (name, pair) in zip(CONNECTIONS, rates.items(), strict=True):
                for log_on in (0, 1) if round_ % 2 == 0 else (1, 0):
                    env = c.mailer_env(port, n, str(base / f"log-{time.time_ns()}.sqlite3"))
                    out = c.run([sys.executable, __file__, "child", str(per_connection * n),
                                 str(log_on)], base, env, keep=True)[2]
                    result = json.loads(out)
                    if result["counts"] != {"sent": per_connection * n}:
                        print(f"not every letter sent: {name}: {out}", file=sys.stderr)
                    sent = result["counts"].get("sent", 0)
                    pair[log_on].append(sent / result["elapsed"] / n)
    finally:
        proxy.terminate()
        proxy.wait()
    c.table(f"letters/s per connection through a {2000 * DELAY:.0f} ms round trip (limit "
            f"{LIMIT:.1f}), {runs} rounds (min / median / max)",
            ["", "log off", "log on", "on / off (paired)"],
            [[name, c.spread(a, 2), c.spread(b, 2),
              c.spread([y / x for x, y in zip(a, b, strict=True)], 3)]
             for name, (a, b) in rates.items()])


def main() -> None:
    if sys.argv[1:2] == ["proxy"]:
        return asyncio.run(_proxy(int(sys.argv[2]), int(sys.argv[3])))
    if sys.argv[1:2] == ["child"]:
        return _child(int(sys.argv[2]), sys.argv[3] == "1")
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--letters", type=int, default=4000)
    parser.add_argument("--latency", action="store_true", help="log off / on, through the proxy")
    parser.add_argument("--per-connection", type=int, default=60)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-send-"))
    port = c.free_port()
    c.write_inputs(base, args.per_connection * 16 if args.latency else args.letters, port)
    sink = c.start_sink(port)
    try:
        if args.latency:
            latency(base, port, args.runs, args.per_connection)
        else:
            loopback(base, port, args.runs, args.letters)
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
