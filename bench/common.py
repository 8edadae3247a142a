"""What both benchmarks share: the synthetic campaign, mailmerge's copy of the template,
a snapshot of the mailer package under test, and small process helpers."""

from __future__ import annotations

import csv
import hashlib
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FROM_ADDRESS = "organiser@example.org"
SENDER_NAME = "Olive Organiser"
# (as written, as it may appear in an address); about 40% of the names are not ASCII.
FIRST = [("Amelia", "amelia"), ("Jürgen", "jurgen"), ("Zoë", "zoe"), ("Marta", "marta"),
         ("Łukasz", "lukasz"), ("Søren", "soren"), ("José", "jose"), ("Ελένη", "eleni"),
         ("Ioana", "ioana"), ("François", "francois"), ("Niamh", "niamh"), ("Pieter", "pieter"),
         ("Giulia", "giulia"), ("Tomáš", "tomas"), ("Grace", "grace"), ("Ada", "ada")]
LAST = [("Hartley", "hartley"), ("Müller", "muller"), ("Lefèvre", "lefevre"),
        ("Kowalska", "kowalska"), ("Wróbel", "wrobel"), ("Kierkegaard", "kierkegaard"),
        ("Álvarez", "alvarez"), ("Papadopoulou", "papadopoulou"), ("Popescu", "popescu"),
        ("de Vries", "devries"), ("Rossi", "rossi"), ("Novák", "novak"), ("Dubois", "dubois"),
        ("Nieminen", "nieminen"), ("Smith", "smith"), ("Hopper", "hopper")]


TITLES = ["Ms", "Mr", "Dr", "Prof.", "Hon."]


COUNTRIES = ["Ireland", "Germany", "France", "Poland", "Denmark", "Spain", "Greece", "Romania",
             "Belgium", "Netherlands", "Italy", "Czechia", "Finland", "Österreich", "Sverige"]


SUBDOMAINS = ["parliament", "senate", "assembly", "ministry", "council", "commission", "office",
              "cabinet"]



class BenchError(Exception):
    """A run failed or rendered something unexpected; the message says which."""



def recipient_rows(count: int, seed: int = 2019) -> Iterator[list[str]]:
    """`count` rows of email,title,name,country with unique addresses (deterministic)."""
    rng = random.Random(seed)
    for index in range(count):
        first, first_ascii = rng.choice(FIRST)
        last, last_ascii = rng.choice(LAST)
        domain = (f"{rng.choice(SUBDOMAINS)}{rng.randrange(8)}."
                  f"example.{'org' if index % 2 else 'net'}")
        local = f"{first_ascii}.{last_ascii.replace(' ', '')}.{index}"
        yield [f"{local}@{domain}", rng.choice(TITLES), f"{first} {last}", rng.choice(COUNTRIES)]



def mailmerge_template(template: Path) -> str:
    """mailer's template in mailmerge's format: the same headers plus FROM, the same body,
    with the settings variables (sender name and address) written in."""
    text = template.read_text(encoding="utf-8-sig")
    head, _, body = text.partition("\n\n")
    lines = []
    for line in head.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() != "from":
            lines.append(f"{name.strip().upper()}: {value.strip()}")
    lines.insert(1, f'FROM: "{SENDER_NAME}" <{FROM_ADDRESS}>')
    merged = "\n".join(lines) + "\n\n" + body
    for variable, value in (("sender_name", SENDER_NAME), ("sender_email", FROM_ADDRESS)):
        merged = merged.replace(f"{{{{ {variable} }}}}", value)
        merged = merged.replace(f"{{{{{variable}}}}}", value)
    return merged



def snapshot(root: Path) -> tuple[Path, str]:
    """Copy the mailer package under `root`, so every run measures the same code even while
    the working tree changes; returns the folder for PYTHONPATH and a hash of the sources."""
    from importlib.util import find_spec

    spec = find_spec("mailer")  # finds the package in use without importing it
    if spec is None or spec.origin is None:
        raise BenchError("mailer is not installed; pip install -e .")
    package = Path(spec.origin).parent
    target = root / "src" / "mailer"
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted(target.rglob("*.py")):
        digest.update(path.relative_to(target).as_posix().encode() + b"\0" + path.read_bytes())
    return root / "src", digest.hexdigest()[:12]



def git_state() -> str:
    """`d3d868a` or `d3d868a, mailer/ modified`, or `unknown`."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "mailer"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}, mailer/ modified" if dirty else head



def executable(name: str) -> str:
    """A console script of this venv (beside sys.executable), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} is not installed; pip install -e '.[bench]'")
    return found


def write_recipients(path: Path, count: int, also: Path, also_count: int) -> None:
    """Write `count` rows to `path` and the first `also_count` of them to `also`."""
    header = ["email", "title", "name", "country"]
    with (path.open("w", encoding="utf-8", newline="") as main_file,
          also.open("w", encoding="utf-8", newline="") as other_file):
        writer, other = csv.writer(main_file), csv.writer(other_file)
        writer.writerow(header)
        other.writerow(header)
        for index, row in enumerate(recipient_rows(count)):
            writer.writerow(row)
            if index < also_count:
                other.writerow(row)
