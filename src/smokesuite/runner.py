"""``smoke``: run the smoke suite (pytest) and write the JSON report the release gate reads.

    smoke [--expect gpu|cpu] [--report FILE] [-k EXPR] [--tests DIR] [-- PYTEST_ARGS...]
    smoke --list-checks [FILE]     # the suite's checks as JSON (recorded in every image at build time)

Exit status: 0 when every check that ran passed and at least one ran; 1 otherwise; 2 for usage
errors or a suite that could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from smokesuite.buildinfo import BuildInfoError, load_build_info
from smokesuite.expect import EXPECT_ENV, expected_mode
from smokesuite.hostinfo import query_nvml
from smokesuite.plugin import CheckLister, ReportCollector
from smokesuite.report import SmokeReport, check_writable, format_table, now_iso, write_report

TESTS_DIR_ENV = "SMOKE_TESTS_DIR"
IMAGE_TESTS_DIR = "/opt/smoke_tests"


def default_tests_dir() -> Path:
    """$SMOKE_TESTS_DIR, else the image's /opt/smoke_tests, else the checkout's smoke_tests/."""
    if os.environ.get(TESTS_DIR_ENV):
        return Path(os.environ[TESTS_DIR_ENV])
    if Path(IMAGE_TESTS_DIR).is_dir():
        return Path(IMAGE_TESTS_DIR)
    return Path(__file__).resolve().parents[2] / "smoke_tests"


def default_report_path() -> Path:
    return Path(os.environ.get("SMOKE_REPORT") or Path(tempfile.gettempdir()) / "smoke-report.json")


def detect_mode() -> str:
    """'gpu' when torch sees a CUDA device, else 'cpu'."""
    try:
        import torch
    except ImportError:
        return "cpu"
    try:
        return "gpu" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "cpu"
    except Exception:
        return "cpu"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smoke", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--expect", choices=("gpu", "cpu"), default=None,
                   help=f"gpu: every GPU skip fails; cpu: CPU-host mode (default: ${EXPECT_ENV}, else detect)")
    p.add_argument("--report", default=None, help="JSON report path (default: $SMOKE_REPORT or $TMPDIR/smoke-report.json)")
    p.add_argument("--tests", default=None, help=f"suite directory (default: ${TESTS_DIR_ENV}, {IMAGE_TESTS_DIR}, or the checkout's)")
    p.add_argument("--image-ref", default=os.environ.get("SMOKE_IMAGE_REF"), help="image reference recorded in the report")
    p.add_argument("-k", dest="keyword", default=None, help="run only checks matching this pytest -k expression")
    p.add_argument("-q", "--quiet", action="store_true", help="less progress output")
    p.add_argument("--list-checks", nargs="?", const="-", default=None, metavar="FILE",
                   help="print (or write to FILE) the suite's check ids as JSON, run nothing")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    return p


def pytest_arguments(args: argparse.Namespace, tests_dir: Path) -> list[str]:
    argv = [str(tests_dir), "--rootdir", str(tests_dir), "-p", "no:cacheprovider", "-rfEs",
            "--continue-on-collection-errors",
            "-q" if args.quiet else "-v", "--color=no"]
    ini = tests_dir / "pytest.ini"
    if ini.is_file():
        argv += ["-c", str(ini)]
    if args.keyword:
        argv += ["-k", args.keyword]
    return argv + list(args.pytest_args)


def list_checks(args: argparse.Namespace, tests_dir: Path) -> int:
    """Collect only: the check list the release gate holds a report against."""
    import pytest

    lister = CheckLister()
    argv = [a for a in pytest_arguments(args, tests_dir) if a not in ("-v", "-q")]
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON
        code = pytest.main([*argv, "--collect-only", "-qq"], plugins=[lister])
    if lister.errors or code not in (pytest.ExitCode.OK,):
        for e in lister.errors:
            print(f"smoke: error: {e}", file=sys.stderr)
        print(f"smoke: error: the suite in {tests_dir} does not collect cleanly (pytest exit {int(code)})", file=sys.stderr)
        return 2
    text = json.dumps(lister.result().to_json(), indent=2) + "\n"
    if args.list_checks == "-":
        sys.stdout.write(text)
    else:
        Path(args.list_checks).write_text(text)
        print(f"smoke: {len(lister.checks)} checks listed in {args.list_checks}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.expect:
        os.environ[EXPECT_ENV] = args.expect
    try:
        expect = expected_mode()
        build_info = load_build_info()
    except (ValueError, BuildInfoError) as exc:
        print(f"smoke: error: {exc}", file=sys.stderr)
        return 2
    tests_dir = Path(args.tests) if args.tests else default_tests_dir()
    if not tests_dir.is_dir():
        print(f"smoke: error: suite directory {tests_dir} not found (set --tests or ${TESTS_DIR_ENV})", file=sys.stderr)
        return 2
    tests_dir = tests_dir.absolute()
    sys.dont_write_bytecode = True
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    if args.list_checks is not None:
        return list_checks(args, tests_dir)
    report_path = (Path(args.report) if args.report else default_report_path()).absolute()
    why = check_writable(report_path)
    if why:  # before the suite: minutes of checks must never end in a lost report
        print(f"smoke: error: cannot write the report to {report_path}: {why}", file=sys.stderr)
        return 2

    # The suite never writes into its own directory (read-only in the image): no bytecode above.
    import pytest  # late: `smoke --help` stays fast

    print(f"smoke: suite {tests_dir}, expect={expect or 'unset'}, "
          f"variant={build_info.variant if build_info else 'unknown (no build info)'}", flush=True)
    started_at, t0 = now_iso(), time.monotonic()
    collector = ReportCollector()
    # No chdir: check ids are relative to --rootdir already, and a user without a passwd entry may
    # not be allowed back into the working directory the container started in.
    code = pytest.main(pytest_arguments(args, tests_dir), plugins=[collector])
    duration = time.monotonic() - t0

    report = SmokeReport(
        image_ref=args.image_ref, variant=build_info.variant if build_info else None,
        build_info=build_info.raw if build_info else None, mode=expect or detect_mode(), expect=expect,
        host=query_nvml().to_report(), checks=collector.checks, started_at=started_at,
        finished_at=now_iso(), duration_s=duration,
    )
    try:
        written = write_report(report, report_path)
    except OSError as exc:
        print(f"smoke: error: cannot write the report to {report_path}: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(report))
    print(f"report: {written}")
    if code in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR):
        print(f"smoke: pytest stopped with exit code {int(code)}", file=sys.stderr)
        return 2
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
