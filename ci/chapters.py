"""The one way through the book, shared by ci/book and ci/test.

    python ci/chapters.py book [--reference | --full] [--device D] [--dataset NAME] [--data-root PATH] [--chapters 01,02]
    python ci/chapters.py test [--no-chapters] [-- PYTEST_ARGS...]
    python ci/chapters.py check-pairs
    python ci/chapters.py script [--reference | --full] [--device D] [...] --chapters 05

Papermill is the book's only executor: each chapter's Jupytext source (chapters/NN_name.py) is
executed with parameters into book/chapters/NN_name.ipynb, its JSON record goes to
results/<setting>-<dataset>/ (the reference setting: records/reference-<dataset>/, committed),
and Jupyter Book 1 renders the executed notebooks (execute_notebooks: off). `script` runs
chapters as plain Python scripts instead (figures are not shown, Markdown prints as text), for
a machine that has covidlib and CUDA but no Jupyter kernel, such as a GPU check (ci/gpu_check);
its records go to results/script-<setting>-<dataset>/, never to records/.

Three settings, one code path: quick (phantom or real data, minutes: CI), reference (real data
sized for a 2-core CPU; its records are committed and shown in the book) and full (the report's
settings, for a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_SOURCES = ROOT / "chapters"
EXECUTED = ROOT / "book" / "chapters"
RESULTS = ROOT / "results"
RECORDS = ROOT / "records"
SETTINGS = ("quick", "reference", "full")
# Where ci/test finds the real data when it is present (CI runs skip it cleanly otherwise).
REAL_DATASET = "covid-semiseg"
REAL_DATA = Path(os.environ.get("COVIDLIB_REAL_DATA", ROOT.parent / "shared" / "data" / "covid-semiseg"))
HTML = ROOT / "book" / "_build" / "html"
# What ci/book passes to every chapter: papermill must find each name in the parameters cell.
BOOK_PARAMETERS = ("dataset", "data_root", "setting", "device", "seed", "output_dir")


def fail(message: str) -> NoReturn:
    print(f"\n[FAILED] {message}", file=sys.stderr)
    raise SystemExit(1)


def toc_chapters() -> list[str]:
    """Chapter names (``NN_name``) in the order _toc.yml lists them."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    names: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            file = node.get("file")
            if isinstance(file, str) and file.startswith("book/chapters/"):
                names.append(file.removeprefix("book/chapters/"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    missing = [n for n in names if not (CHAPTER_SOURCES / f"{n}.py").exists()]
    if missing:
        fail(f"_toc.yml lists chapters without a source in chapters/: {', '.join(missing)}")
    return names


def check_pairs() -> list[str]:
    """Problems with the chapter pairs: missing partner, differing cells, outputs, kernelspec."""
    import jupytext

    problems = []
    sources = sorted(CHAPTER_SOURCES.glob("*.py"))
    for py in sources:
        nb_path = py.with_suffix(".ipynb")
        if not nb_path.exists():
            problems.append(f"{py.relative_to(ROOT)} has no paired {nb_path.name}: run 'jupytext --sync {py.relative_to(ROOT)}'")
            continue
        text_nb, json_nb = jupytext.read(py), jupytext.read(nb_path)
        cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
        if cells(text_nb) != cells(json_nb):
            problems.append(f"{py.relative_to(ROOT)} and {nb_path.name} differ: run 'jupytext --sync {py.relative_to(ROOT)}'")
        if any(c.get("outputs") or c.get("execution_count") for c in json_nb.cells if c.cell_type == "code"):
            problems.append(f"{nb_path.relative_to(ROOT)} carries outputs: clear them (committed notebooks stay clean)")
        if json_nb.metadata.get("kernelspec", {}).get("name") != "python3":
            problems.append(f"{nb_path.relative_to(ROOT)} has no 'python3' kernelspec (papermill needs one)")
        if not any("parameters" in c.metadata.get("tags", []) for c in json_nb.cells):
            problems.append(f"{nb_path.relative_to(ROOT)} has no cell tagged 'parameters'")
        else:
            problems += unreadable_parameters(nb_path)
    for nb_path in sorted(CHAPTER_SOURCES.glob("*.ipynb")):
        if not nb_path.with_suffix(".py").exists():
            problems.append(f"{nb_path.relative_to(ROOT)} has no Jupytext source {nb_path.with_suffix('.py').name}")
    return problems


def unreadable_parameters(nb_path: Path) -> list[str]:
    """Book parameters papermill cannot read from the notebook's parameters cell (it then warns
    "Passed unknown parameter" and the chapter's own default may win)."""
    from papermill.inspection import inspect_notebook

    found = inspect_notebook(str(nb_path))
    return [f"{nb_path.relative_to(ROOT)}: papermill cannot read the parameter {name!r} from the parameters cell "
            f"(write it as 'name = value  # comment' on one line)" for name in BOOK_PARAMETERS if name not in found]


def results_dir_for(setting: str, dataset: str) -> Path:
    """Where a run's records go: the reference setting's are committed under records/."""
    return (RECORDS if setting == "reference" else RESULTS) / f"{setting}-{dataset}"


def execute_chapter(name: str, parameters: dict[str, object], executed: Path = EXECUTED) -> float:
    """Execute one chapter with papermill into ``executed``; return its wall time in seconds."""
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook = jupytext.read(CHAPTER_SOURCES / f"{name}.py")
    executed.mkdir(parents=True, exist_ok=True)
    output = executed / f"{name}.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{name}.ipynb"
        jupytext.write(notebook, source)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(source), str(output), parameters=parameters, kernel_name="python3",
                cwd=str(CHAPTER_SOURCES), progress_bar=False, request_save_on_cell_execute=False,
                # The kernel's own log (TCP transport notice, the interrupt at shutdown) is noise
                # here; errors in cells still reach papermill and stop the build.
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
            )
        except PapermillExecutionError as error:
            first_lines = "\n    ".join(error.source.strip().splitlines()[:6])
            fail(
                f"chapter {name}: cell {error.cell_index} (execution count {error.exec_count}) raised "
                f"{error.ename}: {error.evalue}\n  cell source:\n    {first_lines}\n"
                f"  the executed notebook with the traceback: {output.relative_to(ROOT)}"
            )
    elapsed = time.perf_counter() - start
    hide_bookkeeping(output)
    return elapsed


def hide_bookkeeping(path: Path) -> None:
    """Tag the cells readers need not see with ``remove-cell`` in an executed notebook.

    Papermill's injected parameters cell and the ``# NBVAL_CHECK_OUTPUT`` cells (the seeded
    summary nbval compares) are bookkeeping: Jupyter Book drops a ``remove-cell`` cell from the
    page, while nbval, which ignores that tag, still runs and compares them.
    """
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    changed = False
    for cell in notebook.cells:
        tags = cell.metadata.setdefault("tags", [])
        bookkeeping = "injected-parameters" in tags or (
            cell.cell_type == "code" and cell.source.lstrip().startswith("# NBVAL_CHECK_OUTPUT"))
        if bookkeeping and "remove-cell" not in tags:
            tags.append("remove-cell")
            changed = True
        elif not tags:
            del cell.metadata["tags"]
    if changed:
        nbformat.write(notebook, path)


def chapter_parameters(*, setting: str, device: str, dataset: str, seed: int, data_root: str | None,
                       output_dir: Path) -> dict[str, object]:
    """The parameters every chapter takes (BOOK_PARAMETERS); ``data_root`` only when given."""
    parameters: dict[str, object] = dict(dataset=dataset, setting=setting, device=device, seed=seed,
                                         output_dir=str(output_dir))
    if data_root:
        parameters["data_root"] = str(Path(data_root).resolve())
    return parameters


def execute_chapters(names: list[str], *, setting: str, device: str, dataset: str, seed: int,
                     data_root: str | None, executed: Path = EXECUTED, resume: bool = False) -> Path:
    """Execute ``names`` in order; with ``resume``, skip chapters whose record is there and fresh."""
    from covidlib.records import read_reference
    from covidlib.results import atomic_write_text

    results_dir = results_dir_for(setting, dataset)
    results_dir.mkdir(parents=True, exist_ok=True)
    parameters = chapter_parameters(setting=setting, device=device, dataset=dataset, seed=seed,
                                    data_root=data_root, output_dir=results_dir)
    print(f"[book] executing {len(names)} chapter(s) with {parameters}", flush=True)
    timings_path = results_dir / "_timings.json"
    timings: dict[str, float] = {}
    if timings_path.exists():  # a partial run (--chapters) keeps the other chapters' times
        previous = json.loads(timings_path.read_text(encoding="utf-8"))
        if previous.get("parameters") == parameters:
            timings = {name: previous["seconds"][name] for name in toc_chapters() if name in previous["seconds"]}
    for name in names:
        record = results_dir / f"{name}.json"
        if resume and record.exists() and not read_reference(record).stale and not rewritten_since(record):
            print(f"[book] {name}: its record is up to date, kept (--force to run it again)", flush=True)
            continue
        print(f"[book] {name} ...", end=" ", flush=True)
        timings[name] = round(execute_chapter(name, parameters, executed), 1)
        timings = {n: timings[n] for n in toc_chapters() if n in timings}  # in book order
        print(f"{timings[name]:.1f} s", flush=True)
        # Written after every chapter so that the results chapter, run last, sees the others' times.
        timing_record = {"parameters": parameters, "seconds": timings,
                         "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}"}
        atomic_write_text(timings_path, json.dumps(timing_record, indent=2) + "\n")
    print(f"[book] {len(names)} chapter(s) done; {sum(timings.get(n, 0.0) for n in names):.1f} s of chapter time",
          flush=True)
    return results_dir


# Script order matters (require.js defines the loader embed-amd.js needs): dicts keep it.
WIDGET_JS_LOCAL = {  # paths under html_static_path (book/_static), filled by install_book_js()
    "widgets/require.js": {},
    "widgets/html-manager/embed-amd.js": {"data-jupyter-widgets-cdn": "https://cdn.jsdelivr.net/npm/"},
}
WIDGET_JS_CDN = {
    "https://cdn.jsdelivr.net/npm/requirejs@2.3.8/require.js": {"crossorigin": "anonymous"},
    "https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@1.0.15/dist/embed-amd.js": {
        "data-jupyter-widgets-cdn": "https://cdn.jsdelivr.net/npm/", "crossorigin": "anonymous"},
}


def build_html() -> None:
    import yaml

    print("[book] rendering HTML with Jupyter Book", flush=True)
    start = time.perf_counter()
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    sphinx_config = config.setdefault("sphinx", {}).setdefault("config", {})
    if install_book_js():
        sphinx_config["nb_ipywidgets_js"] = WIDGET_JS_LOCAL
        sphinx_config["mathjax_path"] = "mathjax/es5/tex-mml-chtml.js"
    else:
        sphinx_config["nb_ipywidgets_js"] = WIDGET_JS_CDN
    with tempfile.NamedTemporaryFile("w", suffix=".yml", dir=ROOT / "book", delete=False) as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    try:
        result = subprocess.run(
            # -W: a broken cross-reference or a figure Sphinx cannot place fails the build instead of
            # reaching a reader; --keep-going lists every such warning before failing
            [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(ROOT / "book"),
             "--config", handle.name, "-W", "--keep-going"],
            cwd=ROOT,
        )
    finally:
        os.unlink(handle.name)
    if result.returncode != 0:
        fail("jupyter-book build failed, or warned (a warning fails it: -W); see the messages above")
    print(f"[book] HTML in {HTML.relative_to(ROOT)}/ ({time.perf_counter() - start:.1f} s)", flush=True)


def install_book_js() -> bool:
    """Fetch the JavaScript the HTML book needs offline (ipywidgets embedding, MathJax) from npm.

    Versions are pinned in book/package.json and its lock file; the files are copied into
    book/_static/ (ignored by git). Returns False, and the book names the CDN instead, when
    npm is not available.
    """
    book = ROOT / "book"
    static = book / "_static"
    wanted = [static / "widgets" / "html-manager" / "embed-amd.js", static / "widgets" / "require.js",
              static / "mathjax" / "es5" / "tex-mml-chtml.js"]
    if all(path.exists() for path in wanted):
        return True
    if shutil.which("npm") is None:
        print("[book] npm not found: the HTML book's widgets and maths will load their JavaScript from the CDN")
        return False
    print("[book] fetching the book's JavaScript with npm (book/package.json)", flush=True)
    result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=book)
    if result.returncode != 0:
        fail("npm ci in book/ failed: the book's JavaScript could not be fetched")
    modules = book / "node_modules"
    for folder in ("widgets", "mathjax"):
        shutil.rmtree(static / folder, ignore_errors=True)
    shutil.copytree(modules / "@jupyter-widgets" / "html-manager" / "dist", static / "widgets" / "html-manager")
    shutil.copy2(modules / "requirejs" / "require.js", static / "widgets" / "require.js")
    shutil.copytree(modules / "mathjax" / "es5", static / "mathjax" / "es5")
    return True


# Outside a kernel IPython's display() prints an object's repr; a script prints Markdown's text.
SCRIPT_PROLOGUE = """import IPython.display
IPython.display.display = lambda *shown, **_: print(*(getattr(item, "data", item) for item in shown))
"""


def chapter_script(name: str, parameters: dict[str, object]) -> str:
    """Chapter ``name``'s Jupytext source with ``parameters`` assigned right after its parameters
    cell, where papermill injects them: a plain Python script of the chapter."""
    lines = (CHAPTER_SOURCES / f"{name}.py").read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("# %%") and '"parameters"' in line), None)
    if start is None:
        fail(f"chapters/{name}.py has no cell tagged parameters")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("# %%")), len(lines))
    lines[end:end] = [f"{key} = {value!r}" for key, value in parameters.items()]
    return SCRIPT_PROLOGUE + "\n".join(lines) + "\n"


def run_script(name: str, parameters: dict[str, object]) -> float:
    """Run chapter ``name`` as a script in a fresh interpreter (in chapters/, as papermill does);
    return its wall time in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / f"{name}.py"
        script.write_text(chapter_script(name, parameters), encoding="utf-8")
        start = time.perf_counter()
        environment = {**os.environ, "MPLBACKEND": "Agg",
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        result = subprocess.run([sys.executable, str(script)], cwd=CHAPTER_SOURCES, env=environment)
    if result.returncode != 0:
        fail(f"chapter {name} (run as a script) exited with status {result.returncode}")
    return time.perf_counter() - start


def chosen_chapters(chapters: str) -> list[str]:
    """The _toc.yml chapters whose names start with one of the comma-separated ``chapters`` (all when empty)."""
    names = toc_chapters()
    if chapters:
        wanted = [c.strip() for c in chapters.split(",") if c.strip()]
        unknown = [w for w in wanted if not any(n.startswith(w) for n in names)]
        if unknown:
            fail(f"--chapters {chapters}: no chapter in _toc.yml starts with {', '.join(unknown)}; chapters: {', '.join(names)}")
        names = [n for n in names if any(n.startswith(w) for w in wanted)]
    return names


def command_script(args: argparse.Namespace) -> None:
    setting = "full" if args.full else "reference" if args.reference else "quick"
    dataset = args.dataset or "phantom"
    results_dir = RESULTS / f"script-{setting}-{dataset}"
    parameters = chapter_parameters(setting=setting, device=args.device, dataset=dataset, seed=args.seed,
                                    data_root=args.data_root, output_dir=results_dir)
    for name in chosen_chapters(args.chapters):
        print(f"[script] {name} with {parameters}", flush=True)
        print(f"[script] {name} done in {run_script(name, parameters):.1f} s", flush=True)


def command_book(args: argparse.Namespace) -> None:
    names = chosen_chapters(args.chapters)
    start = time.perf_counter()
    setting = "full" if args.full else "reference" if args.reference else "quick"
    if setting == "reference" and not args.data_root:
        fail("--reference runs on real data: give --data-root (and --dataset, default covid-semiseg)")
    dataset = args.dataset or (REAL_DATASET if setting == "reference" else "phantom")
    if setting == "reference":
        # The book shows the committed records next to its own quick run: the reference run
        # writes records (and keeps its executed notebooks aside) but does not replace the book.
        execute_chapters(names, setting=setting, device=args.device, dataset=dataset, seed=args.seed,
                         data_root=args.data_root, resume=not args.force,
                         executed=ROOT / "book" / "_build" / f"chapters-reference-{dataset}")
        print(f"[book] reference records in {results_dir_for(setting, dataset).relative_to(ROOT)}/: commit them, "
              "then ci/book rebuilds the book showing them")
        return
    execute_chapters(names, setting=setting, device=args.device, dataset=dataset, seed=args.seed,
                     data_root=args.data_root)
    build_html()
    print(f"[book] done in {time.perf_counter() - start:.1f} s; open {HTML / 'index.html'}")


def run_pytest(arguments: list[str], what: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", *arguments], cwd=ROOT)
    if result.returncode == 5:
        fail(f"{what}: pytest collected no tests")
    if result.returncode != 0:
        fail(f"{what}: pytest exited with {result.returncode}")


def run_static_checks() -> None:
    """ruff (pyflakes, syntax, escapes, bugbear) over the repository and mypy over the library, the
    benchmarks and these scripts, with the settings (and mypy's files) in pyproject.toml."""
    for what, command in (("ruff", ["ruff", "check", "."]), ("mypy", ["mypy"])):
        print(f"[test] {what}", flush=True)
        if subprocess.run([sys.executable, "-m", *command], cwd=ROOT).returncode != 0:
            fail(f"{what} found problems (listed above)")


def execute_and_check(names: list[str], dataset: str, data_root: Path | None, executed: Path) -> None:
    """Execute the chapters in quick mode on ``dataset`` and re-run them under nbval."""
    execute_chapters(names, setting="quick", device="auto", dataset=dataset, seed=0,
                     data_root=str(data_root) if data_root else None, executed=executed)
    print(f"[test] nbval --nbval-lax: re-running the chapters executed on {dataset}", flush=True)
    # a worker a core, each keeping a notebook's cells together in its one kernel
    run_pytest(["--nbval-lax", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(executed),
                "-n", "auto", "--dist", "loadfile",
                *[str(executed / f"{n}.ipynb") for n in names]], f"nbval on the chapters executed on {dataset}")


def rewritten_since(record: Path) -> list[str]:
    """The records that ``record`` shows and that were rewritten after it read them.

    A chapter that shows other records (chapter 01 the phantom-to-real benchmark, chapter 09
    all of them) lists them with the time each was written in ``numbers["records_shown"]``;
    its own code fingerprint cannot see a benchmark rewrite its record.
    """
    shown = json.loads(record.read_text(encoding="utf-8")).get("numbers", {}).get("records_shown", {})
    rewritten = []
    for name, written in shown.items():
        source = record.parent / f"{name}.json"
        now = json.loads(source.read_text(encoding="utf-8")).get("created") if source.exists() else None
        if now != written:
            rewritten.append(name)
    return rewritten


def report_stale_records() -> None:
    """List committed reference records whose code changed since they were made, or which show
    records rewritten since (not a failure)."""
    from covidlib.config import cpu_supports_bf16, processor_name
    from covidlib.records import (benchmark_of, describe_machine, other_numerics, processor_family, read_reference,
                                  stale_records)

    stale = stale_records(RECORDS)
    for reference in stale:
        runtime = reference.record.get("runtime", {})
        made_on = describe_machine(runtime)
        if {"units", "runs"} & set(reference.numbers):  # a resumable benchmark keeps units only at their numerics
            # the benchmark is run again with the record's --threads (its regenerate command says so)
            here = {"device_name": processor_name(), "cpu_bf16": cpu_supports_bf16(), "threads": runtime.get("threads"),
                    "cpu_family": processor_family()}
            differ = other_numerics(runtime, here)
            made_on += ("; its units resume on this machine" if not differ else
                        "; its units resume only there ("
                        + ", ".join(f"{name} {runtime.get(name)} there, {here.get(name)} here" for name in differ)
                        + f"), not on this {describe_machine(here, threads=False)}, "
                        f"which keeps its own with --record {benchmark_of(reference.path.stem)}-<machine>")
        print(f"[test] stale record {reference.path.relative_to(ROOT)} (made on {made_on}): "
              f"changed since: {', '.join(reference.stale[:5])}; regenerate with {reference.command}")
    outdated = {path: names for path in sorted(RECORDS.glob("*/[!_]*.json")) if (names := rewritten_since(path))}
    for path, names in outdated.items():
        print(f"[test] stale record {path.relative_to(ROOT)}: shows records rewritten since: {', '.join(names)}; "
              f"regenerate with {read_reference(path).command}")
    if stale or outdated:
        print(f"[test] {len(stale) + len(outdated)} stale reference record(s)")


def command_test(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    run_static_checks()
    print("[test] pytest tests/", flush=True)
    # every test: pyproject deselects the `slow` ones only for quick local runs. One pytest-xdist
    # worker a core (each test runs at one torch thread, conftest.py), work-stealing because one test
    # trains for minutes while most take milliseconds; `ci/test -- -n 0` runs them in one process.
    run_pytest(["tests", "-m", "", "-n", "auto", "--dist", "worksteal", *args.pytest_args], "unit tests")
    print("[test] chapter pairs", flush=True)
    problems = check_pairs()
    if problems:
        fail("chapter pairs:\n  " + "\n  ".join(problems))
    print(f"[test] {len(list(CHAPTER_SOURCES.glob('*.py')))} chapter pair(s) in sync, no outputs", flush=True)
    if not args.no_chapters:
        names = toc_chapters()
        execute_and_check(names, "phantom", None, EXECUTED)
        build_html()
        browser_check = ROOT / "ci" / "browser_check.py"
        if browser_check.exists():
            result = subprocess.run([sys.executable, str(browser_check), str(HTML)], cwd=ROOT)
            if result.returncode != 0:
                fail("the browser check of the built book failed")
        if (REAL_DATA / "TrainingSet").is_dir():
            print(f"[test] real data found at {REAL_DATA}: the chapters again, quick, on {REAL_DATASET}", flush=True)
            execute_and_check(names, REAL_DATASET, REAL_DATA, ROOT / "book" / "_build" / f"chapters-{REAL_DATASET}")
        else:
            print(f"[test] no real data at {REAL_DATA} (set COVIDLIB_REAL_DATA): the real-data chapter run is skipped")
    report_stale_records()
    print(f"[test] all checks passed in {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    book = sub.add_parser("book", help="execute the chapters and build the HTML book")
    script = sub.add_parser("script", help="run chapters as plain Python scripts (no Jupyter kernel), "
                                           "records to results/script-<setting>-<dataset>/")
    for command in (book, script):
        setting = command.add_mutually_exclusive_group()
        setting.add_argument("--reference", action="store_true",
                             help="real data sized for a 2-core CPU (book: records to records/reference-<dataset>/, "
                                  "committed; resumes: chapters with an up-to-date record are kept)")
        setting.add_argument("--full", action="store_true", help="the report's settings (hours on a GPU)")
        command.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        command.add_argument("--dataset", default=None,
                             help="dataset name from covidlib.datasets (default: phantom; book --reference: covid-semiseg)")
        command.add_argument("--data-root", default=None, help="folder holding the dataset (else $COVIDLIB_DATA/<dataset>)")
        command.add_argument("--chapters", default="", help="comma-separated chapter numbers, e.g. 01,04")
        command.add_argument("--seed", type=int, default=0)
    book.add_argument("--force", action="store_true", help="with --reference: run every chapter again")
    test = sub.add_parser("test", help="pytest, chapter pair checks, chapters under nbval")
    test.add_argument("--no-chapters", action="store_true", help="skip executing the chapters")
    test.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    sub.add_parser("check-pairs", help="only check that chapter pairs are in sync and clean")
    args = parser.parse_args(argv)
    if args.command == "book":
        command_book(args)
    elif args.command == "script":
        command_script(args)
    elif args.command == "test":
        command_test(args)
    else:
        problems = check_pairs()
        print("\n".join(problems) or "chapter pairs in sync")
        raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
