"""The shape of the code that keeps `dvc repro` honest: each stage's code deps in dvc.yaml are
exactly the Python files its `cmd` imports (module level and inside functions, `if __name__ ==
"__main__":` and `if TYPE_CHECKING:` blocks aside, package __init__ files included), nothing imports a stage
(pipeline/stages/), and no module imports itself back through others. Static: nothing is imported to find out."""

from __future__ import annotations

import ast
import shlex
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# Our own packages: imports of anything else (the standard library, torch, ...) are not followed.
PACKAGES = ("pipeline", "crawlers")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """pipeline.x.y -> pipeline/x/y.py or pipeline/x/y/__init__.py (relative to root), if ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def with_packages(path: Path, root: Path = ROOT) -> set[Path]:
    """The file and the __init__.py of every package above it: importing pipeline.generation.tasks
    runs pipeline/__init__.py and pipeline/generation/__init__.py first."""
    files = {path}
    for parent in path.parents:
        if parent == Path("."):
            break
        if (root / parent / "__init__.py").is_file():
            files.add(parent / "__init__.py")
    return files


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators))


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def imported_files(path: Path, root: Path = ROOT, main_guards: bool = False) -> set[Path]:
    """Our files that `path` imports directly, anywhere in the file (inside functions too);
    `if __name__ == "__main__":` blocks only with main_guards; never `if TYPE_CHECKING:` blocks
    (annotations, which never run, so editing what they name cannot change an output)."""
    tree = ast.parse((root / path).read_text(encoding="utf-8"), filename=str(path))
    package = list(path.parent.parts)
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                for stmt in child.orelse:
                    visit_one(stmt)
                continue
            if _is_main_guard(child) and not main_guards:
                for stmt in child.orelse:
                    visit_one(stmt)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pipeline import chat`
        visit(node)

    visit(tree)
    files: set[Path] = set()
    for name in names:
        parts = name.split(".")
        found = next((f for f in (module_file(".".join(parts[:i]), root) for i in range(len(parts), 0, -1)) if f), None)
        if found is not None:
            files |= with_packages(found, root)
    files.discard(path)
    return files


def closure(start: Path, root: Path = ROOT) -> set[Path]:
    """Every file of ours that running `start` imports, directly or through others."""
    seen: set[Path] = set()
    todo = list(with_packages(start, root))
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_files(path, root))
    return seen


def stages(dvc_yaml: dict) -> dict[str, dict]:
    """name -> stage definition; a foreach stage once, with its `do` template."""
    return {name: (stage["do"] if "foreach" in stage else stage) for name, stage in dvc_yaml["stages"].items()}


def cmd_file(cmd: str, root: Path = ROOT) -> Path:
    """`python -m pipeline.stages.crawl ...` -> pipeline/stages/crawl.py; `python -m pipeline.chat` -> pipeline/chat/__main__.py."""
    words = shlex.split(cmd)
    assert words[:2] == ["python", "-m"], f"stage cmd {cmd!r} is not `python -m <module>`"
    base = Path(*words[2].split("."))
    for candidate in (base / "__main__.py", base.with_suffix(".py")):
        if (root / candidate).is_file():
            return candidate
    raise AssertionError(f"stage cmd {cmd!r}: no module {words[2]}")


def code_deps(stage: dict) -> set[Path]:
    return {Path(d) for d in stage.get("deps", []) if Path(d).parts[0] in PACKAGES}


def covered(dep: Path, file: Path) -> bool:
    return dep == file or dep in file.parents


def deps_problems(dvc_yaml: dict, root: Path = ROOT) -> list[str]:
    """What differs between each stage's code deps and its import closure: pipeline/ files must be
    listed one by one (no blanket folder); crawlers/, which Scrapy also loads by name from its
    settings, may be listed as a folder."""
    problems = []
    for name, stage in stages(dvc_yaml).items():
        needed = closure(cmd_file(stage["cmd"], root), root)
        deps = code_deps(stage)
        listed = [Path(d) for d in stage.get("deps", []) if Path(d).parts[0] in PACKAGES]
        for dep in sorted({d for d in listed if listed.count(d) > 1}):
            problems.append(f"stage {name}: {dep} is listed more than once")
        for dep in sorted(deps):
            if any(other != dep and other in dep.parents for other in deps):
                problems.append(f"stage {name}: {dep} is inside another dep of the stage; list one of them")
        for dep in sorted(deps):
            if dep.parts[0] == "pipeline" and not dep.suffix:
                problems.append(f"stage {name}: {dep} is a folder; list the files the stage imports")
            elif not any(covered(dep, f) for f in needed):
                problems.append(f"stage {name}: dep {dep} is code the stage does not import")
        for file in sorted(needed):
            if not any(covered(dep, file) for dep in deps):
                problems.append(f"stage {name}: imports {file}, which is not in its deps")
    return problems


def load_dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


def test_stage_code_deps_are_exactly_the_import_closure():
    problems = deps_problems(load_dvc_yaml())
    assert not problems, "dvc.yaml deps differ from what the stages import:\n" + "\n".join(problems)


def test_the_deps_check_fails_on_a_missing_or_an_unused_dep():
    dvc_yaml = load_dvc_yaml()
    synth = dvc_yaml["stages"]["synth"]
    dropped = "pipeline/tools/search.py"
    assert dropped in synth["deps"]
    synth["deps"].remove(dropped)
    assert deps_problems(dvc_yaml) == [f"stage synth: imports {dropped}, which is not in its deps"]

    dvc_yaml = load_dvc_yaml()
    dvc_yaml["stages"]["prepare"]["deps"].append("pipeline/train/trainer.py")
    assert deps_problems(dvc_yaml) == ["stage prepare: dep pipeline/train/trainer.py is code the stage does not import"]

    dvc_yaml = load_dvc_yaml()
    dvc_yaml["stages"]["judge"]["deps"].append("pipeline")
    assert "stage judge: pipeline is a folder; list the files the stage imports" in deps_problems(dvc_yaml)


def test_a_lazy_import_is_part_of_the_closure(tmp_path):
    """Imports inside functions count; those under `if __name__ == "__main__":` do not."""
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "stage.py").write_text("def main():\n    from pipeline import lib\n\n"
                                  "if __name__ == '__main__':\n    import pipeline.cli\n    main()\n")
    (pkg / "lib.py").write_text("from . import util\n")
    (pkg / "util.py").write_text("")
    (pkg / "cli.py").write_text("")
    assert closure(Path("pipeline/stage.py"), tmp_path) == {
        Path("pipeline/__init__.py"), Path("pipeline/stage.py"), Path("pipeline/lib.py"), Path("pipeline/util.py")}


def all_modules() -> list[Path]:
    return sorted(p.relative_to(ROOT) for p in (ROOT / "pipeline").rglob("*.py"))


STAGES_DIR = Path("pipeline/stages")


def stage_import_problems(paths: list[Path], root: Path = ROOT) -> list[str]:
    """Imports of a stage module (pipeline/stages/*.py) by any file: stages meet through files,
    and the library, bench/ and tests use the library. Running a stage as `python -m` (runpy) is
    not an import."""
    problems = []
    for path in paths:
        for dep in sorted(imported_files(path, root, main_guards=True)):
            if dep.parent == STAGES_DIR and dep.name != "__init__.py":
                problems.append(f"{path} imports {dep}")
    return problems


def test_every_stage_cmd_runs_a_module_of_pipeline_stages():
    for name, stage in stages(load_dvc_yaml()).items():
        assert cmd_file(stage["cmd"]).parent == STAGES_DIR, f"stage {name}: {stage['cmd']} is not a module of {STAGES_DIR}"


def test_nothing_imports_a_stage():
    files = all_modules() + sorted(p.relative_to(ROOT) for d in ("tests", "bench", "scripts", "crawlers")
                                   for p in (ROOT / d).rglob("*.py"))
    problems = stage_import_problems(files)
    assert not problems, "stages meet through files, not imports:\n" + "\n".join(problems)


def test_the_stage_import_check_fails_on_an_import_of_a_stage(tmp_path):
    (tmp_path / "pipeline" / "stages").mkdir(parents=True)
    for name in ("pipeline/__init__.py", "pipeline/stages/__init__.py", "pipeline/stages/dedup.py", "pipeline/lib.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "pipeline" / "report.py").write_text("def main():\n    from pipeline.stages.dedup import main\n")
    (tmp_path / "run.py").write_text("import runpy\nrunpy.run_module('pipeline.stages.dedup', run_name='__main__')\n")
    assert stage_import_problems([Path("pipeline/report.py"), Path("run.py")], tmp_path) == [
        "pipeline/report.py imports pipeline/stages/dedup.py"]


def test_no_import_cycles():
    graph = {path: imported_files(path, main_guards=True) - with_packages(path) for path in all_modules()}
    state: dict[Path, str] = {}
    cycles = []

    def walk(node: Path, trail: list[Path]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(str(p) for p in trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, trail + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            walk(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def dvc_outputs(dvc_yaml: dict, key: str = "new_site") -> list[tuple[str, bool]]:
    """(path, cached) of every output, metric and plot file of dvc.yaml; a foreach stage's ${key}
    as a site or dataset name that no shipped domain has."""
    found = []
    for body in stages(dvc_yaml).values():
        for section in ("outs", "metrics", "plots"):
            for entry in body.get(section) or []:
                path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
                found.append((path.replace("${key}", key), (opts or {}).get("cache", True)))
    return found


def test_every_cached_output_is_git_ignored_by_a_committed_pattern():
    """DVC adds a .gitignore entry for each output it caches and, when a later stage of the same
    `dvc repro` fails, takes the entries that command added back out (treeverse/dvc#11091): a new
    site's crawl output would then wait in `git status` to be committed. The committed .gitignore
    files already ignore every cached output, for any site or dataset name, so DVC adds no entry;
    the outputs kept in git (cache: false) are not ignored."""
    outputs = dvc_outputs(load_dvc_yaml())
    assert ("data/raw/new_site.jsonl", True) in outputs and ("metrics/summary.json", False) in outputs
    paths = [path for path, _ in outputs]
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(paths),
                          capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    ignored = set(proc.stdout.split())
    assert [path for path, cached in outputs if cached and path not in ignored] == []
    assert [path for path, cached in outputs if not cached and path in ignored] == []
