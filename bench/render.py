"""mailer check and dry run against mailmerge's dry run, each once a round: letters/s and
peak RSS. See README.md."""

from __future__ import annotations

import argparse
import email.policy
import os
import shutil
import statistics
import tempfile
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import common as c


def command(kind: str, limit: str = "--no-limit") -> list[str]:
    if kind == "mailmerge":
        return [str(c.BIN / "mailmerge"), "--dry-run", "--output-format", "raw", limit,
                "--template", "mm.txt", "--database", "recipients.csv", "--config", "mm.conf"]
    dry = ["send", "--dry-run", "--outbox", "outbox"] if kind == "dry" else ["check"]
    return [str(c.BIN / "mailer"), *dry]  # recipients.csv, templates/letter.txt


def same_letters(folder: Path) -> str:
    """Both tools' first letter: the same To, Subject and body text."""
    c.run(command("dry"), folder)
    ours = min((folder / "outbox").iterdir()).read_bytes()
    raw = c.run(command("mailmerge", "--limit=1"), folder, keep=True)[2]
    theirs = raw.split("\n", 1)[1].split("\n>>> ")[0]  # between '>>> message 1' and '... sent'
    parse = BytesParser(policy=email.policy.default).parsebytes
    a, b = parse(ours), parse(theirs.encode())
    assert isinstance(a, EmailMessage)
    assert isinstance(b, EmailMessage)
    for part in ("To", "Subject", "body"):
        mine, other = ((m.get_content().replace("\r\n", "\n").strip() if part == "body"
                        else str(m[part])) for m in (a, b))
        if mine != other:
            raise SystemExit(f"the letters' {part} differ:\n{mine!r}\n{other!r}")
    return f"The first letter has the same To ({a['To']}), Subject and body in both tools."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--check-only", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-render-"))
    full, one = base / "full", base / "one"  # one: a 1-row list, for the start-up time
    c.write_inputs(full, args.rows)
    c.write_inputs(one, 1)
    os.environ.update(c.mailer_env(log=str(base / "log")))
    kinds = ["check"] if args.check_only else ["check", "dry", "mailmerge"]
    if not args.check_only:
        print(same_letters(full))
    # kind -> folder -> (seconds, peak RSS MB) of each run
    runs: dict[str, dict[Path, list[tuple[float, float]]]] = {
        k: {full: [], one: []} for k in kinds}
    for _ in range(args.runs):
        for kind in kinds:  # each round runs each kind once: its pairs
            for folder in (full, one):
                shutil.rmtree(folder / "outbox", ignore_errors=True)
                runs[kind][folder].append(c.run(command(kind), folder)[:2])
    wall = {k: [s for s, _ in v[full]] for k, v in runs.items()}
    net = {k: [s - statistics.median(s for s, _ in v[one]) for s in wall[k]]
           for k, v in runs.items()}
    rows = []
    for kind in kinds:
        ratios = ["-", "-"] if kind == "mailmerge" or args.check_only else [
            c.spread([m / d for d, m in zip(t[kind], t["mailmerge"], strict=True)], 2)
            for t in (wall, net)]  # paired: the same round's runs
        rows.append([kind, *(c.spread([args.rows / s for s in t[kind]], 0) for t in (wall, net)),
                     c.spread([m for _, m in runs[kind][full]]), *ratios])
    c.table(f"{args.rows:,} rows, {args.runs} runs (min / median / max)",
            ["", "letters/s", "letters/s net of start-up", "peak RSS MB",
             "x mailmerge", "x mailmerge net"], rows)
    shutil.rmtree(base)


if __name__ == "__main__":
    main()
