"""The chapter pair checks of ci/chapters.py catch each way a pair can go wrong."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("ci_chapters", ROOT / "ci" / "chapters.py")
ci_chapters = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ci_chapters)

SOURCE = """# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
quick = True
dataset = "phantom"
data_root = ""  # the dataset's folder
setting = "quick"
device = "auto"
seed = 0
output_dir = "results"

# %%
print(quick)
"""


@pytest.fixture
def chapters(tmp_path, monkeypatch):
    monkeypatch.setattr(ci_chapters, "CHAPTER_SOURCES", tmp_path)
    monkeypatch.setattr(ci_chapters, "ROOT", tmp_path)
    (tmp_path / "01_demo.py").write_text(SOURCE)
    jupytext.write(jupytext.reads(SOURCE, fmt="py:percent"), tmp_path / "01_demo.ipynb")
    return tmp_path


def test_a_clean_pair_passes(chapters):
    assert ci_chapters.check_pairs() == []


def test_edited_source_without_sync_is_reported(chapters):
    (chapters / "01_demo.py").write_text(SOURCE.replace("print(quick)", "print(not quick)"))
    assert any("differ" in p for p in ci_chapters.check_pairs())


def test_outputs_in_the_committed_notebook_are_reported(chapters):
    nb = jupytext.read(chapters / "01_demo.ipynb")
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="True\n")]
    jupytext.write(nb, chapters / "01_demo.ipynb")
    assert any("carries outputs" in p for p in ci_chapters.check_pairs())


def test_missing_partner_and_missing_parameters_are_reported(chapters):
    (chapters / "02_alone.py").write_text(SOURCE)
    (chapters / "03_orphan.ipynb").write_text((chapters / "01_demo.ipynb").read_text(encoding="utf-8"))
    no_params = SOURCE.replace(' tags=["parameters"]', "")
    (chapters / "01_demo.py").write_text(no_params)
    jupytext.write(jupytext.reads(no_params, fmt="py:percent"), chapters / "01_demo.ipynb")
    problems = "\n".join(ci_chapters.check_pairs())
    assert "02_alone.py has no paired" in problems
    assert "03_orphan.ipynb has no Jupytext source" in problems
    assert "no cell tagged 'parameters'" in problems


def test_a_parameter_papermill_cannot_read_is_reported(chapters):
    # papermill gives up on a line whose comment holds quotes and '=': it then ignores data_root
    unreadable = SOURCE.replace('data_root = ""  # the dataset\'s folder',
                                'data_root = ""  # folder: with dataset = "covid-semiseg", real slices')
    (chapters / "01_demo.py").write_text(unreadable)
    jupytext.write(jupytext.reads(unreadable, fmt="py:percent"), chapters / "01_demo.ipynb")
    problems = ci_chapters.check_pairs()
    assert len(problems) == 1 and "cannot read the parameter 'data_root'" in problems[0]


def test_the_books_toc_lists_only_chapters_with_sources():
    names = ci_chapters.toc_chapters()  # raises SystemExit naming any chapter without a source
    assert names and all((ROOT / "chapters" / f"{name}.py").exists() for name in names)


TOC = """format: jb-book
root: book/intro
parts:
  - caption: Chapters
    chapters:
      - file: book/chapters/01_demo
      - file: book/chapters/02_gone
        sections:
          - file: book/chapters/04_nested_gone
  - caption: About
    chapters:
      - file: book/reproducing
"""


def test_toc_naming_a_chapter_without_a_source_stops_naming_it(chapters, capsys):
    (chapters / "_toc.yml").write_text(TOC)
    with pytest.raises(SystemExit) as stop:
        ci_chapters.toc_chapters()
    assert stop.value.code == 1
    message = capsys.readouterr().err
    assert "_toc.yml lists chapters without a source in chapters/: 02_gone, 04_nested_gone" in message
    assert "01_demo" not in message and "reproducing" not in message
    # with the sources present, the chapters come back in the toc's order, other pages left out
    (chapters / "02_gone.py").write_text(SOURCE)
    (chapters / "04_nested_gone.py").write_text(SOURCE)
    assert ci_chapters.toc_chapters() == ["01_demo", "02_gone", "04_nested_gone"]


def test_a_failing_chapter_stops_the_build_naming_chapter_and_cell(chapters, monkeypatch, tmp_path, capsys):
    (chapters / "01_demo.py").write_text(SOURCE.replace("print(quick)", "raise ValueError('phantom lost')"))
    with pytest.raises(SystemExit) as stop:
        ci_chapters.execute_chapter("01_demo", {"quick": True}, tmp_path / "executed")
    assert stop.value.code == 1
    message = capsys.readouterr().err
    assert "chapter 01_demo: cell" in message and "ValueError: phantom lost" in message
    assert "raise ValueError" in message  # the failing cell's source
    assert (tmp_path / "executed" / "01_demo.ipynb").exists()  # kept, with the traceback, for reading


def test_a_record_showing_a_rewritten_record_is_outdated(tmp_path):
    """Chapter 09 shows other records: once one of them is rewritten (or first written), its own
    record is out of date although no code changed."""
    import json

    def write(name: str, created: str, shown: dict | None = None) -> Path:
        path = tmp_path / f"{name}.json"
        numbers = {} if shown is None else {"records_shown": shown}
        path.write_text(json.dumps({"chapter": name, "created": created, "numbers": numbers}), encoding="utf-8")
        return path

    write("ablation", "2026-11-30T01:00:00+00:00")
    results = write("09_results", "2026-11-30T02:00:00+00:00",
                    {"ablation": "2026-11-30T01:00:00+00:00", "04_unet": None})
    assert ci_chapters.rewritten_since(results) == []
    assert ci_chapters.rewritten_since(tmp_path / "ablation.json") == []  # shows nothing
    write("ablation", "2026-11-30T03:00:00+00:00")
    assert ci_chapters.rewritten_since(results) == ["ablation"]
    write("04_unet", "2026-11-30T03:00:00+00:00")
    assert ci_chapters.rewritten_since(results) == ["ablation", "04_unet"]


def test_stale_records_are_listed_with_the_command_that_regenerates_each(tmp_path, monkeypatch, capsys):
    from covidlib.fingerprint import code_fingerprint

    source = tmp_path / "module.py"
    source.write_text("VALUE = 1\n")
    folder = tmp_path / "reference-covid-semiseg"
    folder.mkdir()
    for name in ("04_unet", "semi_recipe"):
        record = {"chapter": name, "numbers": {}, "runtime": {"dataset": "covid-semiseg"}, "created": "then",
                  "fingerprint": {"code": code_fingerprint(files=[source])}}
        (folder / f"{name}.json").write_text(json.dumps(record))
    # a chapter that shows semi_recipe as it was written "then"; its own code never changes
    (tmp_path / "other.py").write_text("VALUE = 1\n")
    shows = {"chapter": "09_results", "numbers": {"records_shown": {"semi_recipe": "then"}}, "runtime": {},
             "fingerprint": {"code": code_fingerprint(files=[tmp_path / "other.py"])}}
    (folder / "09_results.json").write_text(json.dumps(shows))
    monkeypatch.setattr(ci_chapters, "RECORDS", tmp_path)
    monkeypatch.setattr(ci_chapters, "ROOT", tmp_path)
    ci_chapters.report_stale_records()
    assert "stale" not in capsys.readouterr().out

    source.write_text("VALUE = 2\n")
    semi_recipe = json.loads((folder / "semi_recipe.json").read_text())
    (folder / "semi_recipe.json").write_text(json.dumps({**semi_recipe, "created": "now"}))
    ci_chapters.report_stale_records()
    lines = capsys.readouterr().out.splitlines()
    assert any("09_results.json: shows records rewritten since: semi_recipe" in line and line.endswith(
        "regenerate with ci/book --reference --dataset covid-semiseg --data-root DIR --chapters 09") for line in lines)
    assert any("04_unet.json" in line and line.endswith(
        "regenerate with ci/book --reference --dataset covid-semiseg --data-root DIR --chapters 04") for line in lines)
    assert any("semi_recipe.json" in line and line.endswith(
        "regenerate with .venv/bin/python benchmarks/semi_recipe.py --data-root DIR") for line in lines)
    assert lines[-1] == "[test] 3 stale reference record(s)"
    # a resumable benchmark's line (its record keeps units) says whether they can resume here: the same
    # processor and precision
    import covidlib.config
    import covidlib.records

    monkeypatch.setattr(covidlib.records, "processor_family", lambda: 25)
    for bf16, expected in ((False, "; its units resume on this machine)"),
                           (True, "; its units resume only there (cpu_bf16 False there, True here), not on this "
                                 "AMD EPYC (family 25), bf16, "
                                 "which keeps its own with --record semi_recipe-<machine>)")):
        (folder / "semi_recipe.json").write_text(json.dumps(
            {**semi_recipe, "created": "now", "numbers": {"units": []},
             "runtime": {"device_name": "AMD EPYC", "cpu_bf16": False, "threads": 2}}))
        monkeypatch.setattr(covidlib.config, "processor_name", lambda: "AMD EPYC")
        monkeypatch.setattr(covidlib.config, "cpu_supports_bf16", lambda bf16=bf16: bf16)
        ci_chapters.report_stale_records()
        semi_line, = [line for line in capsys.readouterr().out.splitlines() if "semi_recipe.json (made on" in line]
        assert "(made on AMD EPYC, float32, 2 threads" + expected in semi_line
        assert "its units" not in "".join(line for line in lines if "04_unet.json" in line)
    # in bfloat16 one processor name covers generations that round differently: the family decides
    for family, expected in ((25, "; its units resume on this machine)"),
                             (26, "; its units resume only there (cpu_family 26 there, 25 here), not on this "
                                   "AMD EPYC (family 25), bf16, "
                                   "which keeps its own with --record semi_recipe-<machine>)")):
        (folder / "semi_recipe.json").write_text(json.dumps(
            {**semi_recipe, "created": "now", "numbers": {"units": []},
             "runtime": {"device_name": "AMD EPYC", "cpu_bf16": True, "threads": 2, "cpu_family": family}}))
        ci_chapters.report_stale_records()
        semi_line, = [line for line in capsys.readouterr().out.splitlines() if "semi_recipe.json (made on" in line]
        assert f"(made on AMD EPYC (family {family}), bf16, 2 threads" + expected in semi_line


def test_hide_bookkeeping_removes_only_the_injected_parameters_and_nbval_cells(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("setting = 'quick'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("setting = 'reference'", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print('a result')"),
        nbformat.v4.new_markdown_cell("# NBVAL_CHECK_OUTPUT in prose is not a check cell"),
        nbformat.v4.new_code_cell("  # NBVAL_CHECK_OUTPUT\nprint(summary)"),
    ]
    path = tmp_path / "chapter.ipynb"
    nbformat.write(notebook, path)
    ci_chapters.hide_bookkeeping(path)
    ci_chapters.hide_bookkeeping(path)  # a second pass changes nothing more
    tags = [cell.metadata.get("tags", []) for cell in nbformat.read(path, as_version=4).cells]
    assert tags == [["parameters"], ["injected-parameters", "remove-cell"], [], [], ["remove-cell"]]


def test_a_chapter_runs_as_a_script_with_parameters_after_its_parameters_cell(chapters, capfd):
    script = ci_chapters.chapter_script("01_demo", {"quick": False, "output_dir": "/tmp/out"})
    lines = script.splitlines()
    assert lines.index("quick = False") > lines.index("output_dir = \"results\"")  # after the defaults
    assert lines.index("output_dir = '/tmp/out'") < lines.index("print(quick)")
    ci_chapters.run_script("01_demo", {"quick": False})
    assert capfd.readouterr().out.strip() == "False"
    (chapters / "01_demo.py").write_text(SOURCE.replace(
        "print(quick)", "from IPython.display import Markdown, display\ndisplay(Markdown(f'**{quick}**'))"))
    ci_chapters.run_script("01_demo", {"quick": False})
    assert capfd.readouterr().out.strip() == "**False**"  # Markdown's text, not its repr
    (chapters / "02_broken.py").write_text(SOURCE.replace("print(quick)", "raise ValueError('no')"))
    with pytest.raises(SystemExit):
        ci_chapters.run_script("02_broken", {})
    assert "chapter 02_broken (run as a script) exited with status 1" in capfd.readouterr().err


def test_gpu_check_names_every_missing_package_before_touching_the_gpu(tmp_path: Path) -> None:
    """A Python without site-packages (-S) lacks the check's dependencies: ci/gpu_check stops at once
    and names them, instead of failing tests minutes into a lent GPU's time."""
    bare_python = tmp_path / "python"
    bare_python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare_python.chmod(0o755)
    result = subprocess.run([str(ROOT / "ci" / "gpu_check")], env={"PATH": "/usr/bin:/bin", "PYTHON": str(bare_python),
                            "LOGS": str(tmp_path / "logs")}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "lacks" in result.stderr and "lungmask" in result.stderr and "pytest-xdist" in result.stderr
    assert "no CUDA device" not in result.stderr + result.stdout  # stopped before asking torch
    assert not (tmp_path / "logs" / "pytest.log").exists()


# --- choosing and resuming chapters ------------------------------------------------------------

BOOK_ORDER = ["01_demo", "05_transfer", "02_unet", "09_results"]  # the toc's order is not the names' order


@pytest.fixture
def book(chapters, monkeypatch):
    """A toc of four chapters whose order differs from their numbers', each with a source."""
    toc = "format: jb-book\nroot: book/intro\nchapters:\n" + "".join(f"  - file: book/chapters/{n}\n" for n in BOOK_ORDER)
    (chapters / "_toc.yml").write_text(toc)
    for name in BOOK_ORDER[1:]:
        (chapters / f"{name}.py").write_text(SOURCE)
    monkeypatch.setattr(ci_chapters, "RECORDS", chapters / "records")
    monkeypatch.setattr(ci_chapters, "RESULTS", chapters / "results")
    return chapters


def test_chosen_chapters_match_prefixes_in_toc_order(book):
    assert ci_chapters.chosen_chapters("") == BOOK_ORDER
    assert ci_chapters.chosen_chapters("0") == BOOK_ORDER
    # asked for 02 before 05, listed by the toc the other way round; blanks and repeats ignored
    assert ci_chapters.chosen_chapters(" 02, 05 ,,02") == ["05_transfer", "02_unet"]
    assert ci_chapters.chosen_chapters("09_results") == ["09_results"]


def test_an_unknown_chapter_prefix_stops_naming_it(book, capsys):
    with pytest.raises(SystemExit) as stop:
        ci_chapters.chosen_chapters("02,7,10")
    assert stop.value.code == 1
    message = capsys.readouterr().err
    assert "--chapters 02,7,10: no chapter in _toc.yml starts with 7, 10;" in message
    assert message.rstrip().endswith("chapters: " + ", ".join(BOOK_ORDER))


class FakeChapters:
    """Stands for papermill: "executing" a chapter writes its record (fingerprinting its source,
    and for 09_results the time its shown benchmark record was written) and takes ``seconds``."""

    def __init__(self, folder: Path, seconds: dict[str, float]) -> None:
        self.folder, self.seconds, self.ran, self.runs = folder, seconds, [], 0

    def __call__(self, name: str, parameters: dict, executed: Path) -> float:
        from covidlib.fingerprint import code_fingerprint

        self.ran.append(name)
        self.runs += 1
        out = Path(parameters["output_dir"])
        numbers = {}
        if name == "09_results":
            shown = out / "semi_recipe.json"
            numbers["records_shown"] = {"semi_recipe": json.loads(shown.read_text())["created"] if shown.exists() else None}
        record = {"chapter": name, "numbers": numbers, "created": f"run {self.runs}",
                  "fingerprint": {"code": code_fingerprint(files=[self.folder / f"{name}.py"])}}
        (out / f"{name}.json").write_text(json.dumps(record))
        return self.seconds[name]


def run_book(names, *, resume=True, seed=0):
    return ci_chapters.execute_chapters(names, setting="reference", device="cpu", dataset="toy", seed=seed,
                                        data_root=None, executed=Path("unused"), resume=resume)


def test_reference_run_resumes_only_chapters_whose_records_are_out_of_date(book, monkeypatch):
    """--reference keeps a chapter whose record matches its code and the records it shows; it reruns
    one whose code changed or whose shown record was rewritten, and --force reruns every one."""
    fake = FakeChapters(book, dict.fromkeys(BOOK_ORDER, 1.0))
    monkeypatch.setattr(ci_chapters, "execute_chapter", fake)
    results = book / "records" / "reference-toy"
    results.mkdir(parents=True)
    (results / "semi_recipe.json").write_text(json.dumps({"chapter": "semi_recipe", "numbers": {}, "created": "then"}))
    assert run_book(BOOK_ORDER) == results
    assert fake.ran == BOOK_ORDER  # no records yet: every chapter runs, in the order given

    fake.ran.clear()
    run_book(BOOK_ORDER)
    assert fake.ran == []  # every record fresh

    (book / "05_transfer.py").write_text(SOURCE.replace("print(quick)", "print(not quick)"))  # code changed
    (results / "semi_recipe.json").write_text(json.dumps({"chapter": "semi_recipe", "numbers": {}, "created": "now"}))
    run_book(BOOK_ORDER)
    assert fake.ran == ["05_transfer", "09_results"]
    assert json.loads((results / "09_results.json").read_text())["numbers"]["records_shown"] == {"semi_recipe": "now"}

    fake.ran.clear()
    run_book(BOOK_ORDER)
    assert fake.ran == []  # the reruns brought both records up to date
    run_book(BOOK_ORDER[2:], resume=False)  # --force
    assert fake.ran == BOOK_ORDER[2:]


def test_timings_keep_toc_order_and_other_chapters_times_across_partial_runs(book, monkeypatch):
    """_timings.json lists chapters in book order whatever order they ran in, keeps the times of
    chapters a partial run (--chapters) skipped, and drops them when the parameters changed."""
    fake = FakeChapters(book, {"01_demo": 1.04, "05_transfer": 2.0, "02_unet": 3.26, "09_results": 4.0})
    monkeypatch.setattr(ci_chapters, "execute_chapter", fake)
    timings_path = book / "records" / "reference-toy" / "_timings.json"
    run_book(["09_results", "01_demo"], resume=False)
    timings = json.loads(timings_path.read_text())
    assert list(timings["seconds"].items()) == [("01_demo", 1.0), ("09_results", 4.0)]
    assert timings["parameters"] == ci_chapters.chapter_parameters(
        setting="reference", device="cpu", dataset="toy", seed=0, data_root=None, output_dir=timings_path.parent)

    run_book(["02_unet"], resume=False)
    seconds = json.loads(timings_path.read_text())["seconds"]
    assert list(seconds.items()) == [("01_demo", 1.0), ("02_unet", 3.3), ("09_results", 4.0)]

    run_book(["05_transfer"], resume=False, seed=1)  # other parameters: the earlier times do not apply
    assert json.loads(timings_path.read_text())["seconds"] == {"05_transfer": 2.0}
