"""Mutation testing of the core modules with mutmut 3: does a one-line bug in each module fail a test?

A benchmark, not a CI test (a full run takes hours on a CPU). Each module is mutated on its own, in a copy of the
working tree under ``--work`` (the repository and ``../shared`` stay untouched), against a fast subset of the tests
that cover it; mutmut maps each mutated function to the tests that call it and runs only those. A module's run
stops at ``--budget-s`` seconds (mutmut keeps what it finished, and a later run of the same module resumes). It
prints a table (module, mutants, killed, survived, timeout, % killed; % of the mutants checked so far) and
merges it into ``benchmarks/reference/cpu-mutation.json``, with every survivor's name and diff, so each can be
killed by a new test or recorded as equivalent in ``benchmarks/reference/mutation-equivalent.json``.

    nice -n 15 python benchmarks/mutation.py --modules settings,service.auth --budget-s 900
    nice -n 15 python benchmarks/mutation.py --modules batch --rerun-survivors   # after adding tests
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "benchmarks" / "reference" / "cpu-mutation.json"
EQUIVALENT = REPO / "benchmarks" / "reference" / "mutation-equivalent.json"

# module -> the tests that exercise it and run in seconds (no browser, no training, no full-size model).
MODULES: dict[str, list[str]] = {
    "api.settings": ["tests/test_settings.py", "tests/test_readme_promises.py::test_defaults_are_the_published_demos",
                 "tests/test_generator.py::test_settings_errors_name_what_the_user_typed"],
    "service.auth": ["tests/test_service_auth.py", "tests/test_service_security.py"],
    "service.jobs": ["tests/test_job_store.py",
                     "tests/test_jobs.py::test_store_round_trip_idempotency_and_atomic_start",
                     "tests/test_jobs.py::test_position_cancel_list_and_lost_worker",
                     "tests/test_jobs.py::test_job_ids_are_the_only_way_to_a_path",
                     "tests/test_jobs.py::test_retention_deletes_old_finished_jobs_and_their_folders"],
    "apps.batch": ["tests/test_batch_jobs.py", *(f"tests/test_batch.py::test_{name}" for name in (
        "excel_csv_with_bom_crlf_and_missing_cells", "windows_1252_job_file_is_read", "binary_job_file_is_one_line",
        "precedence_flag_over_row_over_job_settings", "every_bad_row_is_found_before_anything_runs",
        "output_folder_that_is_a_file", "example_job_file_is_valid_and_a_typed_flag_wins")),
        *(f"tests/test_batch_pictures.py::test_{name}" for name in (
            "a_row_without_pictures_digests_as_before_and_the_style_adapter_counts_for_style_rows",
            "yaml_picture_keys_are_paths_beside_the_job_file"))],
    "api.identity": ["tests/test_identity.py", "tests/test_layouts.py", "tests/test_readme_promises.py"],
    "core.denoise": ["tests/test_denoise.py", "tests/test_exactness.py", "tests/test_pipeline_options.py",
                "tests/test_levers.py", "tests/test_several_people.py", "tests/test_readme_promises.py"],
    # SDXL's UNet takes few of the processor's branches (4-D input, norms, masks, diffusers' fallback): the contract
    # test drives them on lone Attention layers against diffusers' own processor, in milliseconds.
    # torch.compile cannot trace mutmut's trampolines: the one-graph test fails on the unmutated code there.
    "core.attention": ["tests/test_attention_contract.py", "tests/test_attention.py", "--deselect",
                  "tests/test_attention.py::test_a_face_block_compiles_in_one_graph_shared_by_its_shape_and_kept_"
                  "across_calls", "tests/test_any_size.py", "-m", "not slow"],
    "apps.swap": ["tests/test_swap_contract.py", *(f"tests/test_swap.py::test_{name}" for name in (
        "head_region_covers_the_head_and_the_crop_holds_the_feathered_mask",
        "crop_stays_inside_the_photo_and_keeps_the_mask_near_an_edge", "a_big_photo_costs_what_a_small_one_does",
        "paste_back_is_exact_outside_the_mask", "swap_repaints_the_head_and_leaves_every_other_pixel",
        "the_model_works_at_its_resolution_whatever_the_photo_size",
        "target_index_picks_the_face_and_errors_are_one_line")),
        "tests/test_readme_promises.py::test_swap_repaint_mask_covers_every_pixel_the_blend_changes",
        "tests/test_any_size.py::test_strength_always_leaves_a_denoising_step"],
    "api.face_detail": ["tests/test_face_detail_contract.py", *(f"tests/test_face_detail.py::test_{name}" for name in
                                                                (
        "faces_are_redrawn_at_working_size_and_the_rest_is_untouched", "nothing_found_is_recorded_not_an_error",
        "options_are_checked", "faces_the_caller_found_are_not_searched_again",
        "generate_records_the_face_detail_pass"))],
    # The region helpers moved out of swap.py (api/regions.py): swap's tests drive them.
    "api.regions": ["tests/test_swap_contract.py", "tests/test_readme_promises.py::test_swap_repaint_mask_covers_"
                    "every_pixel_the_blend_changes", "tests/test_face_detail_contract.py"],
    # The pipeline, split as diffusers splits one: each part mutated against the same tests.
    **{f"pipelines.{part}": ["tests/test_pipeline_contract.py", "tests/test_exactness.py",
                             "tests/test_pipeline_options.py", "tests/test_several_people.py"]
       for part in ("sdxl", "call", "checks", "encoding", "control", "sampling")},
}
# Modules whose tests share the tiny demo model and whose code its build does not run: the model is built once per
# mutmut fork server (benchmarks/mutation_demo.py), not once per mutant.
PREBUILT_DEMO = {"apps.swap", "api.regions", "api.face_detail"}
STATUS = {1: "killed", 3: "killed", 0: "survived", 24: "timeout", -24: "timeout", 36: "timeout", 152: "timeout",
          255: "timeout", None: "not checked", 5: "no tests", 33: "no tests", 34: "skipped"}


def source_of(module: str) -> str:
    return "src/instantid/" + module.replace(".", "/") + ".py"


def prepare(module: str, work: Path) -> Path:
    """A copy of the working tree (tracked and untracked, not ignored) with ``../shared`` and a [tool.mutmut]
    section for this module; the tests are refreshed on every call so new tests reach a resumed run."""
    root = work / module
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout.split("\n")
    for name in filter(None, listed):
        if not (REPO / name).is_file():
            continue
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
        if name.startswith("tests/") and (root / "mutants").is_dir():  # a resumed run reads its own copy
            shutil.copy2(REPO / name, root / "mutants" / name)
    if not (work / "shared").exists():
        (work / "shared").symlink_to(REPO.parent / "shared")
    if not (root / "shared").exists():  # the tests find it next to the tree (mutants/ runs one level deeper)
        (root / "shared").symlink_to(REPO.parent / "shared")
    extra = sorted({p.split("/")[0] for p in filter(None, listed)} - {"src", "tests", "pyproject.toml"})
    section = {
        "source_paths": ["src"], "only_mutate": [source_of(module)], "also_copy": extra,
        "pytest_add_cli_args_test_selection": MODULES[module],
        # one process: mutmut runs the tests itself
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-n", "0",
                                *(["-p", "mutation_demo"] if module in PREBUILT_DEMO else [])],
        "timeout_multiplier": 5.0, "timeout_constant": 20.0,
        # Workers fork from a server that only collected the tests, not from mutmut's main process, which ran
        # them: dlib's thread pool, started there by a face detection, is gone in a fork, and every worker that
        # called dlib hung until its timeout, which counted as a kill.
        "process_isolation": "forkserver",
    }
    pyproject = (REPO / "pyproject.toml").read_text()
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in section.items()]
    (root / "pyproject.toml").write_text(pyproject + "\n".join(lines) + "\n")
    return root


def run_mutmut(root: Path, budget_s: float, names: list[str]) -> None:
    """``mutmut run`` one worker at a time; stopped like Ctrl-C at the budget (mutmut saves each result as it
    goes, so the finished mutants count and a later run resumes). Only the copy's benchmarks/ is importable
    besides mutmut's own paths (the pytest plugin there; no instantid package to shadow the mutants)."""
    # The tree's own benchmarks/ (mutants/ does not exist yet when a fresh run starts, and Python drops a
    # missing sys.path folder for good).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "benchmarks"), "MKL_NUM_THREADS": "1"}
    mutmut = Path(sys.executable).with_name("mutmut")
    process = subprocess.Popen([str(mutmut), "run", "--max-children", "1", *names], cwd=root, env=env,
                               start_new_session=True)
    try:
        process.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def exit_codes(module: str, root: Path) -> dict[str, int | None]:
    meta = root / "mutants" / (source_of(module) + ".meta")
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.is_file() else {}


def keep_earlier_verdicts(module: str, root: Path, earlier: dict[str, int | None]) -> None:
    """A changed test selection makes mutmut forget every verdict; a rerun of the survivors with more tests
    cannot revive a killed mutant, so the earlier verdicts of the mutants it did not rerun stand."""
    meta = root / "mutants" / (source_of(module) + ".meta")
    data = json.loads(meta.read_text())
    codes = data["exit_code_by_key"]
    data["exit_code_by_key"] = {name: code if code is not None else earlier.get(name) for name, code in codes.items()}
    meta.write_text(json.dumps(data))


def results(module: str, root: Path) -> dict[str, str]:
    return {name: STATUS.get(code, "suspicious") for name, code in exit_codes(module, root).items()}


def diff_of(module: str, root: Path, name: str) -> str:
    """The mutant's changed lines (mutmut's own diff, computed in this process: ``mutmut show`` per survivor
    would start Python hundreds of times)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = Path.cwd()
    os.chdir(root)
    try:
        diff = get_diff_for_mutant(name, path=Path(source_of(module)))
    finally:
        os.chdir(cwd)
    return "\n".join(line for line in diff.splitlines() if line.startswith(("-", "+")) and
                     not line.startswith(("---", "+++")))


def summarise(module: str, root: Path, statuses: dict[str, str], equivalent: dict[str, str]) -> dict:
    counts = {s: sum(1 for v in statuses.values() if v == s) for s in ("killed", "survived", "timeout")}
    survivors = [n for n, s in statuses.items() if s == "survived"]
    killed_or_equivalent = counts["killed"] + counts["timeout"] + sum(n in equivalent for n in survivors)
    checked = counts["killed"] + counts["survived"] + counts["timeout"]
    return {
        "module": module, "mutants": len(statuses), "checked": checked, **counts,
        "no_tests": sum(1 for v in statuses.values() if v == "no tests"),
        "not_checked": sum(1 for v in statuses.values() if v == "not checked"),
        "killed_pct": round(100 * (counts["killed"] + counts["timeout"]) / checked, 1) if checked else None,
        "killed_or_equivalent_pct": round(100 * killed_or_equivalent / checked, 1) if checked else None,
        "tests": MODULES[module],
        "survivors": {n: {"diff": diff_of(module, root, n), "equivalent": equivalent.get(n)} for n in survivors},
    }


def table(rows: list[dict]) -> str:
    head = f"{'module':<14}{'mutants':>8}{'checked':>8}{'killed':>8}{'survived':>9}{'timeout':>8}{'% killed':>9}" \
           f"{'% +equiv':>9}"
    body = [f"{r['module']:<14}{r['mutants']:>8}{r['checked']:>8}{r['killed']:>8}{r['survived']:>9}"
            f"{r['timeout']:>8}{r['killed_pct'] if r['killed_pct'] is not None else '-':>9}"
            f"{r['killed_or_equivalent_pct'] if r['killed_or_equivalent_pct'] is not None else '-':>9}"
            for r in rows]
    return "\n".join([head, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(MODULES), help="comma-separated, from: " + ", ".join(MODULES))
    parser.add_argument("--budget-s", type=float, default=1800, help="seconds per module before it is stopped")
    parser.add_argument("--work", type=Path, default=Path("/tmp/instantid-mutation"))
    parser.add_argument("--fresh", action="store_true", help="forget earlier results of these modules")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="check every mutant not killed yet again (survivors, unreached, unchecked; not the "
                             "ones listed as equivalent), after adding tests; the earlier kills stand")
    parser.add_argument("--rerun-timeouts", action="store_true",
                        help="with --rerun-survivors: the timeouts too (a worker that hung rather than a mutant "
                             "that loops)")
    parser.add_argument("--report-only", action="store_true", help="table of what earlier runs found")
    args = parser.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.is_file() else {}
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {"modules": {}}
    for module in modules:
        root = args.work / module
        if args.fresh and root.exists():
            shutil.rmtree(root)
        if not args.report_only:
            prepare(module, args.work)
            earlier = exit_codes(module, root)
            again = ("survived", "no tests", "not checked", *(("timeout",) if args.rerun_timeouts else ()))
            names = [n for n, s in results(module, root).items() if s in again
                     and n not in equivalent.get(module, {})] if args.rerun_survivors else []
            if args.rerun_survivors and not names:
                continue
            start = time.monotonic()
            run_mutmut(root, args.budget_s, names)
            if args.rerun_survivors:
                keep_earlier_verdicts(module, root, earlier)
            print(f"{module}: {time.monotonic() - start:.0f} s", flush=True)
        statuses = results(module, root)
        if statuses:
            reference["modules"][module] = summarise(module, root, statuses, equivalent.get(module, {}))
    # Other runs may have written meanwhile (modules run side by side): update only this run's modules.
    done = {m: reference["modules"][m] for m in modules if m in reference["modules"]}
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {"modules": {}}
    reference["modules"].update(done)
    rows = [reference["modules"][m] for m in MODULES if m in reference["modules"]]
    checked = sum(r["checked"] for r in rows)
    killed = sum(r["killed"] + r["timeout"] for r in rows)
    reference["total"] = {"checked": checked, "killed": killed,
                          "killed_pct": round(100 * killed / checked, 1) if checked else None}
    reference["tool"] = "mutmut " + subprocess.run([str(Path(sys.executable).with_name("mutmut")), "--version"],
                                                   capture_output=True, text=True).stdout.strip().split()[-1]
    REFERENCE.write_text(json.dumps(reference, indent=1) + "\n")
    print(table(rows))
    print(f"total: {killed} of {checked} checked mutants killed ({reference['total']['killed_pct']}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
