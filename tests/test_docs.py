"""Every repository file that the documentation names exists.

Where it looks: the docstrings (every string statement, so module, class, function and attribute
docstrings) and the ``#`` comments of ``cxrlib/**/*.py``, the markdown cells of ``notebooks/*.ipynb``,
and the pages under ``docs/``. Code is never read: a string the program uses is not documentation.

The rule. The text is split into tokens, runs of characters that can occur in a path or in a
placeholder (letters, digits, ``_ . / - ~ : # @ % + $ ? * < > { } [ ]``); anything else (spaces,
backticks, quotes, parentheses, commas, ``=``) ends a token. Trailing ``. , : ; ! ?``, a ``#anchor``
and a ``:line`` suffix are dropped. A token is a *repository path*, and must exist, when

1. it starts with one of the repository's folders, ``docs/ benchmarks/ notebooks/ tests/ cxrlib/
   data/ results/ scripts/`` (a leading ``./`` is dropped): resolved against the repository root;
2. it starts with ``../``: a relative link, resolved against the folder of the file that names it
   (how Jupyter and markdown viewers follow a notebook's or a page's links);
3. it has no ``/`` and ends in ``.md``, ``.cff``, ``.toml`` or ``.sh``: a file at the repository root
   (``README.md``, ``run_all.sh``, ``pyproject.toml``, ``CITATION.cff``).

Not paths, and never checked:

* URLs (anything with ``://``);
* globs and placeholders: a token with ``* ? < > { } [ ] $`` or ``...`` (``results/<profile>/``,
  ``benchmarks/results/fair_test_cpu_*.json``, ``images/{patient:08d}.png``). A path that is a pattern
  must be written as one: ``results/<profile>/``, not ``results/PROFILE/``;
* bare file names with other extensions (``train_val_list.txt``, ``Data_Entry_2017_v2020.csv``,
  ``audit.json``, ``pairs.py``): they name files of the data release, a run's outputs, or a module
  beside the text, not repository paths; write ``cxrlib/data/pairs.py`` to have one checked;
* paths of other projects (``mateuszbuda/brain-segmentation-pytorch``, ``utils/utils.py``): their
  first folder is none of the above;
* the names of files a run writes into its own results folder that rule 3 would take for root files
  (:data:`RUN_OUTPUTS`: ``REPORT.md``).

A path that ``.gitignore`` ignores (``data/phantom/``, ``artifacts/``, ``results/smoke/``) is generated
output, absent from a clone by design: it may be named without existing (asked of ``git check-ignore``
only for paths that are missing).
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TOP_FOLDERS = ("docs", "benchmarks", "notebooks", "tests", "cxrlib", "data", "results", "scripts")
ROOT_FILE_SUFFIXES = (".md", ".cff", ".toml", ".sh")
TOKEN = re.compile(r"[\w./~:#@%+$?*<>{}\[\]-]+")
PLACEHOLDER = re.compile(r"[*?<>{}\[\]$]|\.\.\.")
LINE_SUFFIX = re.compile(r":\d+(:\d+)?$")
#: bare names of files that a run writes beside its results (cxrlib.report.write_report), not root files
RUN_OUTPUTS = frozenset({"REPORT.md"})

#: the package's docstrings and comments and the notebooks' markdown must yield at least this many
#: references, so that a broken extractor cannot pass by finding none (when this test was written:
#: 43 naming 13 different paths there, and 37 more in docs/)
MIN_REFERENCES = 35
MIN_DISTINCT_PATHS = 10


def python_texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every docstring-like string statement and every comment of a Python file."""
    source = path.read_text(encoding="utf-8")
    texts = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            texts.append((node.lineno, node.value.value))
    return texts


def notebook_texts(path: Path) -> list[tuple[int, str]]:
    """(cell number, text) of every markdown cell of a notebook."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(i, "".join(cell["source"])) for i, cell in enumerate(cells) if cell["cell_type"] == "markdown"]


def path_references(text: str) -> list[str]:
    """The tokens of ``text`` that the module docstring's rule calls repository paths, as written
    (without a ``#anchor``, ``:line`` or trailing punctuation)."""
    found = []
    for match in TOKEN.finditer(text):
        token = match.group()
        if "://" in token or PLACEHOLDER.search(token):
            continue
        token = token.split("#", 1)[0]
        token = LINE_SUFFIX.sub("", token.rstrip(".,:;!?")).rstrip(".,:;!?")
        if token.startswith("./"):
            token = token[2:]
        if not token:
            continue
        if token.startswith("../") or token.split("/", 1)[0] in TOP_FOLDERS and "/" in token:
            found.append(token)
        elif ("/" not in token and token.endswith(ROOT_FILE_SUFFIXES) and token not in ROOT_FILE_SUFFIXES
              and token not in RUN_OUTPUTS):
            found.append(token)
    return found


def documentation_files() -> list[tuple[Path, list[tuple[int, str]]]]:
    files = [(p, python_texts(p)) for p in sorted(ROOT.glob("cxrlib/**/*.py"))]
    files += [(p, notebook_texts(p)) for p in sorted(ROOT.glob("notebooks/*.ipynb"))]
    files += [(p, [(1, p.read_text(encoding="utf-8"))]) for p in sorted(ROOT.glob("docs/**/*.md"))]
    return files


def resolve(reference: str, named_in: Path) -> Path:
    base = named_in.parent if reference.startswith("../") else ROOT
    return (base / reference).resolve()


def gitignored(path: Path) -> bool:
    try:
        done = subprocess.run(["git", "check-ignore", "--quiet", "--no-index", str(path.relative_to(ROOT))],
                              cwd=ROOT, capture_output=True)
    except (OSError, ValueError):
        return False
    return done.returncode == 0


def test_the_rule_tells_paths_from_other_tokens():
    text = ("See `docs/papers.md` section 2, ./run_all.sh, README.md and [the data](../data/README.md#use); "
            "cxrlib/config.py:12 and results/cpu/. Not: https://example.org/docs/x.md, results/<profile>/, "
            "benchmarks/results/fair_test_cpu_*.json, images/{patient:08d}.png, train_val_list.txt, "
            "audit.json, pairs.py, mateuszbuda/brain-segmentation-pytorch, utils/utils.py, images_001/..., "
            "a/b, img/s, a run's REPORT.md.")
    assert path_references(text) == ["docs/papers.md", "run_all.sh", "README.md", "../data/README.md",
                                     "cxrlib/config.py", "results/cpu/"]


def test_every_path_named_in_docstrings_comments_and_notebooks_exists():
    in_code, missing = [], []
    for path, texts in documentation_files():
        for where, text in texts:
            for reference in path_references(text):
                if path.suffix != ".md":
                    in_code.append(reference)
                target = resolve(reference, path)
                if not target.exists() and not gitignored(target):
                    missing.append(f"{path.relative_to(ROOT)}:{where}: {reference}")
    assert not missing, "paths named in the documentation that do not exist:\n" + "\n".join(missing)
    assert len(in_code) >= MIN_REFERENCES, f"only {len(in_code)} path references in cxrlib/ and notebooks/"
    assert len(set(in_code)) >= MIN_DISTINCT_PATHS, sorted(set(in_code))


@pytest.mark.parametrize("name", ["docs/papers.md", "LICENSE", "CITATION.cff"])
def test_the_documents_the_code_cites_are_there(name):
    assert (ROOT / name).is_file(), name
