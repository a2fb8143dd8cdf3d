"""`python -m model_store {list,fetch,make-tiny}`: manage local TIPO model directories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_store.manifest import DEFAULT_MODELS_DIR, load_manifest
from model_store.resolve import DEMO_MODEL_NAME


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_store", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("list", help="known TIPO models and whether they are present locally")

    fetch = commands.add_parser("fetch", help="download a known model from the Hugging Face hub")
    fetch.add_argument("name", help="a model name from `list`, e.g. TIPO-200M")
    fetch.add_argument("--dest", type=Path, help=f"target directory (default: {DEFAULT_MODELS_DIR}/NAME)")

    tiny = commands.add_parser("make-tiny", help="build the demo model (trained on synthetic TIPO documents, "
                               "about 2 minutes) or, with --random, a random TIPO-shaped model (tests, benchmarks)")
    tiny.add_argument("--random", action="store_true", help="random weights (seconds) instead of the trained demo")
    tiny.add_argument("--shape", choices=sorted(load_manifest().shapes), default="tiny",
                      help="with --random: tiny (hidden 64, 2 layers), or 200m / 500m (the real TIPO shapes)")
    tiny.add_argument("--dest", type=Path, help=f"target directory (default: {DEFAULT_MODELS_DIR}/{DEMO_MODEL_NAME}"
                      " for the demo, else .../random-SHAPE)")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation (and training) seed")
    tiny.add_argument("--force", action="store_true", help="rebuild even if the directory holds a model")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    manifest = load_manifest()

    if args.command == "list":
        for entry in manifest.models:
            present = (DEFAULT_MODELS_DIR / entry.name / "config.json").is_file()
            print(f"{entry.name:15} {entry.repo_id:25} {entry.shape:5} {entry.license:45} "
                  f"{'present' if present else '-'}")
        return 0

    if args.command == "fetch":
        from model_store.fetch import FetchError, fetch_model

        try:
            path = fetch_model(args.name, args.dest)
        except KeyError as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            return 2
        except FetchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(path)
        return 0

    if args.command == "make-tiny":
        if not args.random:
            if args.shape != "tiny":
                print("error: --shape needs --random (the demo model has one shape)", file=sys.stderr)
                return 2
            from model_store.demo import build_demo_model

            print(build_demo_model(args.dest or DEFAULT_MODELS_DIR / DEMO_MODEL_NAME, seed=args.seed,
                                   overwrite=args.force))
            return 0
        from model_store.tiny import build_random_model

        dest = args.dest or DEFAULT_MODELS_DIR / f"random-{args.shape}"
        print(build_random_model(dest, shape=args.shape, seed=args.seed, overwrite=args.force))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
