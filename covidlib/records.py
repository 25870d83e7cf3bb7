"""Committed reference records: the real-data results the book shows, and whether they are stale.

``ci/book --reference --dataset covid-semiseg --data-root DIR`` runs every chapter in the
*reference* setting (real data, sized for a 2-core CPU) and writes each chapter's record to
``records/reference-<dataset>/NN_name.json``, which is committed. A chapter then shows, beside
what its live run just computed, the tables and figures of its reference record, labelled with
where they come from. Each record carries the fingerprint of the code and data that produced it
(:mod:`covidlib.fingerprint`); when that code changes the record is *stale*: the page says so
and ``ci/test`` lists it, but nothing is recomputed behind the reader's back.

Introduced in chapter 09.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidlib.errors import InvalidInputError
from covidlib.fingerprint import PACKAGE_PARENT, changed_sources

#: Where committed records live in a checkout (``records/<setting>-<dataset>/``).
RECORDS_DIR = PACKAGE_PARENT / "records"
REFERENCE_DATASET = "covid-semiseg"

#: The runtime settings that change a training's last bits: a unit computed otherwise is another number.
#: The processor counts too: the same bfloat16 run gave another Dice on an AVX512-BF16 EPYC than on an
#: AMX Xeon (0.665 against 0.629 on the ablation's first unit), their oneDNN kernels rounding differently.
NUMERICS = ("threads", "cpu_bf16", "device_name")
#: In bfloat16 one name is not enough: "AMD EPYC" names Zen 4 (family 25) and Zen 5 (family 26), and a
#: Zen 4 retrained 7 of 8 runs of the Zen 5 ablation to the last bit but not its 600-epoch run at
#: 160 px (test Dice 0.7579 against 0.7529). In float32 EPYCs of families 23 and 25 agreed on every
#: number of ``phantom_to_real`` and of the chapter records, so there the family is not compared.
BF16_NUMERICS = ("cpu_family",)
#: Fewer (fold, seed) runs than one seed's five folds: a bootstrap interval over them has too few
#: distinct resamples to be read as evidence either way, so the book says so instead of a verdict.
FEWEST_RUNS_TO_READ = 5


def other_numerics(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The :data:`NUMERICS` in which the runtime summary ``stored`` (a record's ``runtime``) differs
    from ``now``, with :data:`BF16_NUMERICS` when both compute in bfloat16: empty when units computed
    under one can resume under the other."""
    names = NUMERICS + (BF16_NUMERICS if stored.get("cpu_bf16") and now.get("cpu_bf16") else ())
    return [name for name in names if stored.get(name) != now.get(name)]


def processor_family(cpuinfo_path: str | Path = "/proc/cpuinfo") -> int | None:
    """The CPU's family number from Linux ``/proc/cpuinfo`` (AMD: 23 Zen and Zen 2, 25 Zen 3 and
    Zen 4, 26 Zen 5; Intel: 6), or ``None`` where the system does not say."""
    try:
        with open(cpuinfo_path, encoding="utf-8") as cpuinfo:
            families = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("cpu family")]
    except OSError:
        return None
    return int(families[0]) if families and families[0].isdigit() else None


def describe_machine(runtime: dict[str, Any], *, threads: bool = True) -> str:
    """Where a record ran, named the same way everywhere in the book: the processor (its model name
    where the record has one, else the device; in bfloat16 with its family, :data:`BF16_NUMERICS`),
    bfloat16 or float32 where known, and the threads, e.g. ``"AMD EPYC (family 26), bf16, 2 threads"``."""
    processor = runtime.get("cpu") or runtime.get("device_name") or "?"
    processor = re.sub(r"\s+", " ", re.sub(r"\((R|TM)\)| Processor| CPU", "", processor)).strip()
    if runtime.get("cpu_bf16") and runtime.get("cpu_family") is not None:
        processor += f" (family {runtime['cpu_family']})"
    precisions: dict[Any, str] = {True: ", bf16", False: ", float32"}  # cpu_bf16 may be missing (None)
    precision = precisions.get(runtime.get("cpu_bf16"), "")
    text = f"{processor}{precision}"
    if threads and runtime.get("threads") is not None:
        count = runtime["threads"]
        text += f", {count} thread{'' if count == 1 else 's'}"
    return text


def benchmark_of(name: str) -> str:
    """The benchmark a record ``name`` belongs to: ``name`` itself, or, for a second kind of machine's
    or a second setting's record ``<benchmark>-<label>`` (e.g. ``ablation-zen4``), the part before the first ``-``."""
    return name.partition("-")[0]


def regenerate_command(name: str, dataset: str = REFERENCE_DATASET, threads: int | None = None) -> str:
    """The command that writes the reference record ``name`` on ``dataset``: a chapter's
    (``"NN_name"``) comes from ``ci/book --reference`` (each chapter sets its own threads), any
    other from its resumable benchmark, ``benchmarks/<name>.py``, with the ``threads`` the record
    ran on: float32 sums, and so the numbers, depend on how many threads share them. A benchmark's
    record of a second kind of machine or setting, ``<benchmark>-<label>`` (e.g. ``ablation-zen4``), comes
    from the same script with ``--record <benchmark>-<label>`` (and a setting's options, which the script
    names when it refuses the record without them)."""
    if name[:2].isdigit():
        return f"ci/book --reference --dataset {dataset} --data-root DIR --chapters {name[:2]}"
    benchmark = benchmark_of(name)
    return (f".venv/bin/python benchmarks/{benchmark}.py --data-root DIR" + (f" --record {name}" if name != benchmark else "")
            + (f" --threads {threads}" if threads else ""))


def reference_dir(dataset: str = REFERENCE_DATASET, records_dir: str | Path | None = None) -> Path:
    """The folder of the committed reference records of ``dataset``."""
    return Path(records_dir or RECORDS_DIR) / f"reference-{dataset}"


def machine_records(benchmark: str | None = None, dataset: str = REFERENCE_DATASET,
                    records_dir: str | Path | None = None) -> list[str]:
    """The names of the committed records of second kinds of machine, ``<benchmark>-<machine>``
    (e.g. ``["ablation-zen4"]``), sorted; only ``benchmark``'s when it is given."""
    names = sorted(path.stem for path in reference_dir(dataset, records_dir).glob("*-*.json"))
    return [name for name in names if benchmark is None or benchmark_of(name) == benchmark]


@dataclass
class ReferenceRecord:
    """A committed record, where it lives, and the source files changed since it was made."""

    record: dict[str, Any]
    path: Path
    stale: list[str] = field(default_factory=list)

    @property
    def numbers(self) -> dict[str, Any]:
        return self.record["numbers"]

    @property
    def dataset(self) -> str:
        """The dataset the record was computed on (its folder says so when its runtime does not)."""
        return self.record.get("runtime", {}).get("dataset") or self.path.parent.name.removeprefix("reference-")

    def source_line(self) -> str:
        """One Markdown line naming the record: dataset, setting, commit, date, and the time of
        the run that wrote it (a benchmark's last run may have reused units stored by earlier ones)."""
        run = self.record.get("runtime", {})
        timing = self.record.get("timing", {})
        minutes = ""
        if timing.get("wall_seconds") is not None:
            minutes = (f" by a run of {timing['wall_seconds'] / 60:.1f} min wall / "
                       f"{timing.get('cpu_seconds', float('nan')) / 60:.1f} min CPU on {describe_machine(run)}")
        return (f"**Reference record** `{self.path.parent.name}/{self.path.name}`: dataset "
                f"**{self.dataset}**, setting **{run.get('setting', '?')}**, seed {run.get('seed', '?')}, "
                f"commit `{str(self.record.get('commit', 'unknown'))[:12]}`, written {self.record.get('created', '?')}"
                f"{minutes}.")

    @property
    def command(self) -> str:
        """The command that regenerates this record (:func:`regenerate_command`)."""
        return regenerate_command(self.path.stem, self.dataset, self.record.get("runtime", {}).get("threads"))

    def notice(self) -> str:
        """The record's source line, and a MyST warning box when it is stale that names the
        command regenerating it (:func:`regenerate_command`) and, for a benchmark's record, the
        machine whose numerics its stored units need."""
        text = self.source_line()
        if self.stale:
            command = self.command
            # a benchmark keeps its stored units only at the numerics that computed them (benchmarks/_nested_cv.py)
            where = "" if self.path.stem[:2].isdigit() or not self.record.get("runtime") else (
                f" Its stored units can be kept only on a machine like the one that made it "
                f"({describe_machine(self.record['runtime'])}): elsewhere the last bits of every number differ.")
            text += ("\n\n:::{warning}\nThis record is **stale**: the code that produced it has changed since "
                     f"({', '.join(f'`{name}`' for name in self.stale[:6])}"
                     f"{' and more' if len(self.stale) > 6 else ''}). Regenerate it with `{command}`.{where}\n:::")
        return text


def reference_notice(reference: ReferenceRecord | None, chapter: str, dataset: str = REFERENCE_DATASET) -> str:
    """What a chapter prints above its real-data results: the record's source line and any
    staleness warning, or, when there is no record, the command that makes one
    (:func:`regenerate_command`)."""
    if reference is not None:
        return reference.notice()
    return (f":::{{note}}\nThere is no committed reference record of `{chapter}` on {dataset} yet: "
            f"`{regenerate_command(chapter, dataset)}` writes it.\n:::")


def read_record(path: str | Path) -> dict[str, Any]:
    """The chapter record (:func:`covidlib.results.write_record`) in ``path``, live or committed;
    an error naming the file when it is not valid JSON or not a chapter record. It lives here, not
    beside ``write_record``, so that reading records needs neither numpy nor the readers of images."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(record, dict) or "chapter" not in record or "numbers" not in record:
        raise InvalidInputError(f"{path}: not a chapter record (no 'chapter'/'numbers' keys)")
    return record


def read_reference(path: str | Path) -> ReferenceRecord:
    """A committed record with its staleness (from its code fingerprint)."""
    path = Path(path)
    record = read_record(path)
    code = record.get("fingerprint", {}).get("code")
    stale = changed_sources(code) if code else ["(no code fingerprint)"]
    return ReferenceRecord(record, path, stale)


def load_reference(chapter: str, dataset: str = REFERENCE_DATASET,
                   records_dir: str | Path | None = None) -> ReferenceRecord | None:
    """The committed reference record of ``chapter`` (``"NN_name"``), or ``None`` when there is none."""
    path = reference_dir(dataset, records_dir) / f"{chapter}.json"
    return read_reference(path) if path.exists() else None


def stale_records(records_dir: str | Path | None = None) -> list[ReferenceRecord]:
    """Every committed record whose code has changed since it was written."""
    root = Path(records_dir or RECORDS_DIR)
    found = [read_reference(path) for path in sorted(root.glob("*/[!_]*.json"))]
    return [reference for reference in found if reference.stale]
