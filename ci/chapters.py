"""The one way through the book, shared by ci/book and ci/test.

    python ci/chapters.py book [--full] [--device D] [--dataset NAME] [--data-root PATH] [--chapters 01,02]
    python ci/chapters.py test [--no-chapters] [-- PYTEST_ARGS...]
    python ci/chapters.py check-pairs

Papermill is the only executor: each chapter's Jupytext source (chapters/NN_name.py) is
executed with parameters into book/chapters/NN_name.ipynb, its JSON record goes to
results/<run>/, and Jupyter Book 1 renders the executed notebooks (execute_notebooks: off).
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

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_SOURCES = ROOT / "chapters"
EXECUTED = ROOT / "book" / "chapters"
RESULTS = ROOT / "results"
HTML = ROOT / "book" / "_build" / "html"


def fail(message: str) -> None:
    print(f"\n[FAILED] {message}", file=sys.stderr)
    raise SystemExit(1)


def toc_chapters() -> list[str]:
    """Chapter names (``NN_name``) in the order _toc.yml lists them."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
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
    for nb_path in sorted(CHAPTER_SOURCES.glob("*.ipynb")):
        if not nb_path.with_suffix(".py").exists():
            problems.append(f"{nb_path.relative_to(ROOT)} has no Jupytext source {nb_path.with_suffix('.py').name}")
    return problems


def run_name(quick: bool, dataset: str) -> str:
    return f"{'quick' if quick else 'full'}-{dataset}"


def execute_chapter(name: str, parameters: dict[str, object]) -> float:
    """Execute one chapter with papermill into book/chapters/; return its wall time in seconds."""
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook = jupytext.read(CHAPTER_SOURCES / f"{name}.py")
    EXECUTED.mkdir(parents=True, exist_ok=True)
    output = EXECUTED / f"{name}.ipynb"
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
    return time.perf_counter() - start


def execute_chapters(names: list[str], *, quick: bool, device: str, dataset: str, seed: int,
                     data_root: str | None) -> Path:
    from covidlib.results import atomic_write_text

    results_dir = RESULTS / run_name(quick, dataset)
    results_dir.mkdir(parents=True, exist_ok=True)
    parameters: dict[str, object] = dict(dataset=dataset, quick=quick, device=device, seed=seed,
                                         output_dir=str(results_dir))
    if data_root:
        parameters["data_root"] = str(Path(data_root).resolve())
    print(f"[book] executing {len(names)} chapter(s) with {parameters}", flush=True)
    timings_path = results_dir / "_timings.json"
    timings: dict[str, float] = {}
    if timings_path.exists():  # a partial run (--chapters) keeps the other chapters' times
        previous = json.loads(timings_path.read_text())
        if previous.get("parameters") == parameters:
            timings = {name: previous["seconds"][name] for name in toc_chapters() if name in previous["seconds"]}
    for name in names:
        print(f"[book] {name} ...", end=" ", flush=True)
        timings[name] = round(execute_chapter(name, parameters), 1)
        timings = {n: timings[n] for n in toc_chapters() if n in timings}  # in book order
        print(f"{timings[name]:.1f} s", flush=True)
        # Written after every chapter so that the results chapter, run last, sees the others' times.
        timing_record = {"parameters": parameters, "seconds": timings,
                         "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}"}
        atomic_write_text(timings_path, json.dumps(timing_record, indent=2) + "\n")
    print(f"[book] {len(names)} chapter(s) executed in {sum(timings[n] for n in names):.1f} s", flush=True)
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
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
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
            [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(ROOT / "book"),
             "--config", handle.name],
            cwd=ROOT,
        )
    finally:
        os.unlink(handle.name)
    if result.returncode != 0:
        fail("jupyter-book build failed (see the messages above)")
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


def command_book(args: argparse.Namespace) -> None:
    names = toc_chapters()
    if args.chapters:
        wanted = [c.strip() for c in args.chapters.split(",") if c.strip()]
        unknown = [w for w in wanted if not any(n.startswith(w) for n in names)]
        if unknown:
            fail(f"--chapters {args.chapters}: no chapter in _toc.yml starts with {', '.join(unknown)}; chapters: {', '.join(names)}")
        names = [n for n in names if any(n.startswith(w) for w in wanted)]
    start = time.perf_counter()
    execute_chapters(names, quick=not args.full, device=args.device, dataset=args.dataset, seed=args.seed,
                     data_root=args.data_root)
    build_html()
    print(f"[book] done in {time.perf_counter() - start:.1f} s; open {HTML / 'index.html'}")


def run_pytest(arguments: list[str], what: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", *arguments], cwd=ROOT)
    if result.returncode == 5:
        fail(f"{what}: pytest collected no tests")
    if result.returncode != 0:
        fail(f"{what}: pytest exited with {result.returncode}")


def command_test(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    print("[test] pytest tests/", flush=True)
    # every test: pyproject deselects the `slow` ones only for quick local runs
    run_pytest(["tests", "-m", "", *args.pytest_args], "unit tests")
    print("[test] chapter pairs", flush=True)
    problems = check_pairs()
    if problems:
        fail("chapter pairs:\n  " + "\n  ".join(problems))
    print(f"[test] {len(list(CHAPTER_SOURCES.glob('*.py')))} chapter pair(s) in sync, no outputs", flush=True)
    if not args.no_chapters:
        names = toc_chapters()
        execute_chapters(names, quick=True, device="auto", dataset="phantom", seed=0, data_root=None)
        print("[test] nbval --nbval-lax: re-running the executed chapters", flush=True)
        run_pytest(["--nbval-lax", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(EXECUTED),
                    *[str(EXECUTED / f"{n}.ipynb") for n in names]], "nbval on the executed chapters")
        build_html()
        browser_check = ROOT / "ci" / "browser_check.py"
        if browser_check.exists():
            result = subprocess.run([sys.executable, str(browser_check), str(HTML)], cwd=ROOT)
            if result.returncode != 0:
                fail("the browser check of the built book failed")
    print(f"[test] all checks passed in {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    book = sub.add_parser("book", help="execute the chapters and build the HTML book")
    book.add_argument("--full", action="store_true", help="the report's settings instead of quick mode")
    book.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    book.add_argument("--dataset", default="phantom", help="dataset name from covidlib.datasets (default: phantom)")
    book.add_argument("--data-root", default=None, help="folder holding the dataset (else $COVIDLIB_DATA)")
    book.add_argument("--chapters", default="", help="comma-separated chapter numbers, e.g. 01,04")
    book.add_argument("--seed", type=int, default=0)
    test = sub.add_parser("test", help="pytest, chapter pair checks, chapters under nbval")
    test.add_argument("--no-chapters", action="store_true", help="skip executing the chapters")
    test.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    sub.add_parser("check-pairs", help="only check that chapter pairs are in sync and clean")
    args = parser.parse_args(argv)
    if args.command == "book":
        command_book(args)
    elif args.command == "test":
        command_test(args)
    else:
        problems = check_pairs()
        print("\n".join(problems) or "chapter pairs in sync")
        raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
