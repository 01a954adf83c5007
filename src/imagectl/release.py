"""Release one variant in one process: smoke suite inside the exact local image, gate, push.

    imagectl release --variant cu124 --registry ghcr.io/ORG [--allow-cpu-only] [--dry-run]

Trusts no file: the report the gate judges is the one the suite wrote a moment ago inside the
image being released (its image ID is the one docker ran), held against the check list the image's
own suite recorded at build time. This is what CI runs; `imagectl push` (gate + push over report
files made earlier) stays for releases whose GPU run happened elsewhere.
"""

from __future__ import annotations

import argparse
import sys

from imagectl import push
from imagectl.docker import DockerError, require_engine
from imagectl.matrix import REPO_ROOT, load_matrix
from imagectl.smoke import SmokeError, run_smoke_in_container
from smokesuite.report import write_report

RECORDS = REPO_ROOT / "build" / "smoke"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    push.add_arguments(parser, report_files=False)  # the report is the run this command makes
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before the smoke container is killed")


def run(args: argparse.Namespace) -> int:
    """Smoke + gate + push in one process (what CI runs): only the image that just passed goes out."""
    matrix = load_matrix(args.matrix)
    variant = matrix.variant(args.variant)
    asked = tuple(x.strip() for x in args.layers.split(",") if x.strip())
    name = args.local_name or matrix.image.name

    def plan() -> push.ReleasePlan:
        push.check_destination(args.registry, args.repository or matrix.image.name)
        require_engine()
        unknown = [x for x in asked if x not in matrix.layers_of(variant)]
        if unknown:  # before minutes of smoke runs
            raise push.GateRefused(f"layer(s) {', '.join(unknown)} not released for {variant.name}: choose from "
                                   f"{', '.join(matrix.layers_of(variant))}")
        layers = asked or push.default_layers(matrix, variant, name)[0]
        expect = "cpu" if args.allow_cpu_only else "gpu"
        found: list[push.FoundReport] = []
        # every image that carries the suite runs it here: data, and devel when it is released
        for layer in [x for x in ("data", "devel") if x == "data" or x in layers]:
            local = f"{name}:{matrix.tags_for(variant, layer)[0]}"
            print(f"imagectl release: smoke suite in {local} (expect={expect})", file=sys.stderr, flush=True)
            try:
                result = run_smoke_in_container(local, expect, docker=args.docker, timeout_s=args.timeout)
            except SmokeError as exc:
                raise push.GateRefused(f"the smoke suite could not run in {local}: {exc}") from None
            if result.report is None:
                f = result.failure
                raise push.GateRefused(f"the smoke suite did not run in {local}: {f.cause if f else 'no report'}; "
                                       f"{f.fix if f else ''}")
            record = RECORDS / f"release-{variant.name}-{layer}-{(result.image_id or '').split(':')[-1][:12]}.json"
            write_report(result.report, record)
            print(f"imagectl release: report kept at {record}", file=sys.stderr)
            found.append(push.FoundReport(result.report, f"the run just made (kept at {record})"))
        return push.plan_release(matrix, variant.name, args.registry, layers=asked or None, repository=args.repository,
                                 local_name=args.local_name, reports=found, allow_cpu_only=args.allow_cpu_only,
                                 docker=args.docker, tag_suffix=args.tag_suffix)

    try:
        return push.push_planned(plan, args, "release")
    except DockerError as exc:
        print(f"imagectl release: error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imagectl release", description=__doc__)
    parser.add_argument("--matrix", default=None)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(None if len(sys.argv) > 1 else ["--help"]))
