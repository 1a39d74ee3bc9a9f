"""``cxrlib`` command line: generate the phantom, prepare the image cache, make a profile's data ready,
train the models that need no other model, run every notebook and model (what ``./run_all.sh`` does),
write a run's report (the README's results section for the reference run); for data publishers,
anonymize a release and audit how linkable it is."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from cxrlib.data.chestxray14 import DataError
from cxrlib.pipeline import trainable


def _phantom(args: argparse.Namespace) -> None:
    import tempfile

    from cxrlib.data.phantom import generate_phantom

    start = time.perf_counter()
    if args.format == "png":
        out = generate_phantom(args.out, n_patients=args.patients, size=args.size, seed=args.seed,
                               max_followups=args.max_followups, overwrite=args.overwrite)
    else:
        from cxrlib.publish.phantom_dicom import write_phantom_dicom

        if args.out.exists() and not args.overwrite:
            raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=args.out.parent) as work:
            source = generate_phantom(Path(work) / "png", n_patients=args.patients, size=args.size,
                                      seed=args.seed, max_followups=args.max_followups)
            out = write_phantom_dicom(source, args.out, seed=args.seed, overwrite=args.overwrite)
        print(f"DICOM files in {out / 'images'}; planted PHI listed in {out / 'phi_truth.json'}")
    print(f"phantom written to {out} in {time.perf_counter() - start:.1f} s")


def _anonymize(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from cxrlib.publish.batch import default_state_folder, run_batch
    from cxrlib.publish.deidentify import HeaderOptions, load_key
    from cxrlib.publish.pipeline import METHODS, ReleasePipeline, pixel_method, trained_anonymizers

    key = load_key(args.key)
    method = pixel_method(args.method, model=args.model, artifacts_dir=args.artifacts, size=args.size,
                          dp_b=args.dp_b, dp_eps=args.dp_eps, dp_m=args.dp_m, seed=args.seed)
    header = HeaderOptions(keep_patient_characteristics=args.keep_patient_characteristics,
                           keep_private_creators=tuple(args.keep_private))
    pipeline = ReleasePipeline(key, method, detect_text=not args.no_text_detection, header=header,
                               rename=not args.keep_names)
    if method.anonymizer is not None and args.model is None and method.source != "parameters":
        _say_which_model(Path(method.source), trained_anonymizers(args.artifacts, METHODS[args.method]))
    state = args.state or default_state_folder(args.output)
    start = time.perf_counter()
    summary = run_batch(args.input, args.output, pipeline, settings=pipeline.settings(),
                        progress=False if args.quiet else None, recorded_name=pipeline.recorded_name,
                        order=pipeline.processing_order, state_dir=state)
    seconds = time.perf_counter() - start
    rows = [["written", summary.done], ["already done (skipped)", summary.skipped],
            ["failed", len(summary.failed)]]
    print(tabulate(rows, headers=["files", "count"]))
    for name, problem in summary.failed:
        print(f"  failed: {name}: {problem}", file=sys.stderr)
    print(f"pixels: {method.describe()}; {summary.done} file(s) in {seconds:.1f} s")
    print(f"publish {args.output} as it is; keep the state folder {state} (it maps outputs to inputs; a rerun "
          "resumes from it) and the key private")
    return 0 if summary.ok else 1


def _say_which_model(chosen: Path, candidates: list[Path]) -> None:
    """Name the model a command took by itself: the newest of those found, which may have been trained on
    other data than the folder at hand."""
    others = [path for path in candidates if path != chosen]
    print(f"model: {chosen} (the newest found" + (f"; {len(others)} other(s), e.g. {others[0]}: pass --model to "
                                                 "choose, one trained on data like this folder's)" if others
                                                 else ")"))


def _prepare(args: argparse.Namespace) -> None:
    from cxrlib.data.cache import prepare_cache

    start = time.perf_counter()
    cache = prepare_cache(args.data_dir, args.size, cache_dir=args.cache_dir, workers=args.workers)
    seconds = time.perf_counter() - start
    print(f"cache of {len(cache.names)} images at {cache.size} px in {cache.directory} ({seconds:.1f} s)")


def _data(args: argparse.Namespace) -> None:
    from cxrlib.config import load_profile
    from cxrlib.data.cache import prepare_cache
    from cxrlib.workspace import ensure_phantom

    profile = load_profile(args.profile)
    folder = args.data_dir or ensure_phantom(profile)
    cache = prepare_cache(folder, profile.data.image_size, workers=profile.data.workers)
    kind = "data" if args.data_dir else "phantom"
    print(f"{kind}: {folder} ({len(cache.names)} images, cached at {cache.size} px)")


def _print_report(written, results: Path) -> None:
    for document, what in written.items():
        if what == "written":
            print(f"{document}: the report of this run; README.md and data/README.md show the reference run "
                  "and are left as they are")
        elif what == "no section":
            print(f"{document} has no results section for the reference run; nothing written")
        else:
            print(f"{document}: results section of the reference run "
                  f"{'rewritten from' if what == 'rewritten' else 'already matches'} {results}")


def _report(args: argparse.Namespace) -> None:
    from cxrlib.report import REFERENCE_PROFILE, write_report

    results = args.results or args.root / "results" / (args.profile or REFERENCE_PROFILE)
    _print_report(write_report(results, args.root, args.profile), results)


def _run(args: argparse.Namespace) -> int:
    from cxrlib.pipeline import RunSettings, Stopped, run

    settings = RunSettings.make(args.root, args.profile, args.data_dir, args.seed, args.results, args.artifacts,
                                args.max_steps)
    progress, handler = logging.getLogger("cxrlib.pipeline"), _ProgressHandler()
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    try:
        outcome = run(settings)
    except (KeyboardInterrupt, Stopped):
        print("cxrlib run: stopped; every job was stopped", file=sys.stderr)
        return 130
    finally:
        progress.removeHandler(handler)
    if not outcome.ok:
        for line in outcome.problems():
            print(f"cxrlib run: {line}", file=sys.stderr)
        return 1
    _print_report(outcome.report, settings.results)
    print(f"== done: figures, metrics and executed notebooks in {settings.results} (timings in "
          f"{outcome.timings})")
    return 0


class _ProgressHandler(logging.Handler):
    """The pipeline's progress lines on stdout, its warnings (a job failed, skipped, stopped) on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        print(record.getMessage(), file=stream, flush=True)


def _timings(args: argparse.Namespace) -> None:
    from cxrlib.pipeline import section_rows

    for notebook in args.notebooks:
        for row in section_rows(notebook):
            print("\t".join(row))


def _audit(args: argparse.Namespace) -> None:
    from cxrlib.config import load_profile
    from cxrlib.publish.audit import (audit_release, find_retrieval_network, load_retrieval_network, read_release,
                                      trained_retrieval_networks)
    from cxrlib.publish.deidentify import load_key
    from cxrlib.publish.report import CAVEAT, write_report

    model_path = args.model or find_retrieval_network(args.artifacts, args.profile)
    if args.model is None:
        _say_which_model(model_path, trained_retrieval_networks(args.artifacts, args.profile))
    model = load_retrieval_network(model_path)
    size = args.size or load_profile(args.profile).data.image_size
    progress = False if args.quiet else None
    release = read_release(args.data_dir, size, detect_text=not args.no_text_detection, progress=progress)
    against = read_release(args.against, size, detect_text=False, progress=progress) if args.against else None
    result = audit_release(release, model, against=against, key=load_key(args.key) if args.key else None,
                           link_distance=args.link_distance, seed=args.seed, progress=not args.quiet)
    result["model"] = str(model_path)
    result["image_size"] = size
    json_path, html_path = write_report(result, release, args.out or Path(args.data_dir).with_name(
        Path(args.data_dir).name + "_audit"))
    print(f"{result['images']} images audited in {result['seconds']:.1f} s ({len(result['unreadable'])} unreadable)")
    print(f"VERDICT: {result['verdict']['text']}")
    if result["manifests_in_release"]:
        print(f"WARNING: {args.data_dir} holds cxrlib anonymize manifests "
              f"({', '.join(result['manifests_in_release'])}), which map outputs to inputs: move them out before "
              "publishing", file=sys.stderr)
    for where, found in (("", result), (f" of {args.against}", result.get("against", {}))):
        missing = found.get("files_without_patient_id", [])
        if missing:
            print(f"{len(missing)} file(s){where} without a patient id, left out of the id-based figures: "
                  + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    if "retrieval" in result:
        r = result["retrieval"]
        print(f"internal linkage: P@1 {r['precision_at_1']:.4f}, mAP@R {r['map_at_r']:.4f}; "
              f"{result['patients_relinked']:.1%} of patients with follow-ups re-linked")
    else:
        print(f"internal linkage not scored: {result['linkage_not_scored']}", file=sys.stderr)
    if "against" in result:
        a = result["against"]
        if "top1" in a:
            print(f"linkage attack against {args.against}: top-1 {a['top1']:.1%} of "
                  f"{a['queries_with_patient_in_other']} images whose patient is in it")
        else:
            print(f"linkage attack against {args.against}: patient ids not compared: {a['linkage_not_scored']}",
                  file=sys.stderr)
    elif args.key:
        print("--key is used with --against only; ignored", file=sys.stderr)
    if "headers" in result:
        print(f"headers: {len(result['headers']['table_e1_1_present'])} Table E.1-1 attribute(s) still present, "
              f"{result['headers']['files_with_private_tags']} file(s) with private tags")
    print(f"report: {html_path} and {json_path}")
    print(CAVEAT)


def _train(args: argparse.Namespace) -> None:
    from cxrlib.workspace import Workspace

    ws = Workspace.open(args.profile, args.data_dir or "", seed=args.seed, artifacts_dir=args.artifacts)
    for model in args.models:
        start = time.perf_counter()
        job = trainable()[model]
        fits = job.fits(getattr(ws, job.attribute))
        done = ", ".join(f"{fit.checkpoint_path.name}: {'trained' if fit.trained else 'loaded'} (best epoch "
                         f"{fit.best_epoch} of {len(fit.history)})" for fit in fits)
        print(f"{model}: {done}; {time.perf_counter() - start:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrlib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_publishing_commands(commands)
    _add_data_commands(commands)
    _add_running_commands(commands)
    return parser


def _add_publishing_commands(commands: argparse._SubParsersAction) -> None:
    """The commands for data publishers: the phantom to try them on, anonymize, audit."""
    phantom = commands.add_parser("phantom", help="write a synthetic data set in the ChestX-ray14 layout")
    phantom.add_argument("--out", type=Path, required=True, help="output folder")
    phantom.add_argument("--patients", type=int, required=True, help="number of patients")
    phantom.add_argument("--size", type=int, default=256, help="image size in pixels (multiple of 8, <= 1024)")
    phantom.add_argument("--seed", type=int, default=42)
    phantom.add_argument("--max-followups", type=int, default=8, help="cap on scans per patient")
    phantom.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    phantom.add_argument("--format", choices=("png", "dicom"), default="png",
                         help="png: the ChestX-ray14 layout; dicom: DX/CR files with synthetic PHI in "
                              "OUT/images and the planted values in OUT/phi_truth.json (for testing "
                              "anonymize and audit)")
    phantom.set_defaults(run=_phantom)

    anonymize = commands.add_parser(
        "anonymize", help="de-identify a folder of DICOM files or PNGs (headers, burned-in text, pixels)",
        description="Anonymize every file under INPUT (recursively) into OUTPUT, under names that carry nothing of the "
                    "input's (see --keep-names). "
                    "DICOM headers follow the PS3.15 basic profile as an allow-list (private tags removed), "
                    "patients get keyed pseudonyms, dates a per-patient shift. INPUT is never written; each "
                    "output file is written atomically and recorded in a manifest in the state folder "
                    "(--state, default OUTPUT.cxrlib-state beside OUTPUT), so a rerun after an interruption "
                    "resumes. Publish OUTPUT as it is, and only OUTPUT: the state folder maps every output to "
                    "its input and holds the raw inputs' SHA-256, so keep it private with the key (or delete "
                    "it once the release is final). Files that cannot be read are reported and skipped; the "
                    "exit code is 1 when any failed.")
    anonymize.add_argument("input", type=Path, help="folder of DICOM files and/or PNGs (read only)")
    anonymize.add_argument("output", type=Path, help="output folder (outside INPUT): the release to publish")
    anonymize.add_argument("--state", type=Path, default=None,
                           help="folder for the resume manifests, outside OUTPUT and INPUT (default: "
                                "OUTPUT.cxrlib-state beside OUTPUT); private: it maps outputs to inputs")
    anonymize.add_argument("--key", type=Path, required=True,
                           help="secret key file (>= 32 bytes, e.g. `head -c 32 /dev/urandom > KEY`): the same "
                                "key gives the same pseudonyms, UIDs and date shifts in every batch; keep it "
                                "secret")
    anonymize.add_argument("--method", choices=("none", "prichexy", "dp-pix", "privacy-net"), default="none",
                           help="pixel anonymization: none; prichexy (PriCheXy-Net's deformation) or "
                                "privacy-net (trained: --model or the newest in --artifacts); dp-pix "
                                "(differentially private pixelization, --dp-b/--dp-eps/--dp-m)")
    anonymize.add_argument("--model", type=Path, default=None,
                           help="a trained anonymizer (NAME.safetensors with its NAME.json sidecar)")
    anonymize.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                           help="where to look for trained anonymizers when --model is not given")
    anonymize.add_argument("--size", type=int, default=None,
                           help="square size the method runs at (default: the size a trained model records; "
                                "dp-pix: the input's own size)")
    anonymize.add_argument("--dp-b", type=int, default=8, help="DP-Pix cell size in pixels")
    anonymize.add_argument("--dp-eps", type=float, default=0.1, help="DP-Pix privacy budget epsilon")
    anonymize.add_argument("--dp-m", type=float, default=1.0, help="DP-Pix neighbourhood m (pixels that may differ)")
    anonymize.add_argument("--seed", type=int, default=0, help="seed of DP-Pix's noise (per file: seed and file hash)")
    anonymize.add_argument("--no-text-detection", action="store_true",
                           help="skip burned-in text detection (BurnedInAnnotation is then never set to NO)")
    anonymize.add_argument("--keep-patient-characteristics", action="store_true",
                           help="keep sex, age, size and weight in DICOM headers (PS3.15 Retain Patient "
                                "Characteristics Option) and age, sex, original image size and pixel spacing "
                                "in the ChestX-ray14 metadata CSV; without it they are removed or left blank")
    anonymize.add_argument("--keep-private", action="append", default=[], metavar="CREATOR",
                           help="keep private tags of this private creator (repeatable); all others are removed")
    anonymize.add_argument("--keep-names", action="store_true",
                           help="keep the input's file and folder names (they may carry names, ids or dates); by "
                                "default DICOM files are written as STUDY/SERIES/SOP.dcm of their new UIDs, PNGs "
                                "as images/NAME with ChestX-ray14 names pseudonymized and other names replaced by "
                                "a keyed hash of their path (ChestX-ray14 names always get pseudonymous patient "
                                "numbers)")
    anonymize.add_argument("--quiet", action="store_true", help="no progress bar")
    anonymize.set_defaults(run=_anonymize)

    audit = commands.add_parser(
        "audit", help="how linkable is a release? re-identification risk, header and pixel findings, report",
        description="Embed every image under DATA_DIR (DICOM or PNG) with a trained re-identification "
                    "(retrieval) network and report internal linkage (P@1, mAP@R, patients re-linked, ROC "
                    "when patient ids are known; nearest-neighbour distances and suspected clusters when not), "
                    "the linkage attack against --against, Table E.1-1 attributes and private tags still in "
                    "the headers, suspected burned-in text and near-duplicates. Writes audit.html and "
                    "audit.json. A low linkage score from one model is evidence, not proof, of anonymity.")
    audit.add_argument("data_dir", type=Path, help="the release: a folder of DICOM files and/or PNGs")
    audit.add_argument("--against", type=Path, default=None,
                       help="another image set to link the release to (e.g. the raw images it was made from)")
    audit.add_argument("--key", type=Path, default=None,
                       help="the anonymization key: pseudonymizes --against's patient ids exactly as anonymize "
                            "did (DICOM PatientID, ChestX-ray14 image names), so a raw set can be scored against "
                            "its anonymized release")
    audit.add_argument("--model", type=Path, default=None,
                       help="a retrieval network (NAME.safetensors + NAME.json); default: the newest notebook "
                            "01 trained for --profile under --artifacts")
    audit.add_argument("--profile", default="cpu", help="profile whose model and image size to use (smoke, cpu, paper)")
    audit.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="where trained models live")
    audit.add_argument("--size", type=int, default=None,
                       help="image size the model was trained at (default: the profile's)")
    audit.add_argument("--link-distance", type=float, default=None,
                       help="embedding distance below which two images count as a suspected same-patient link "
                            "(default: the 10 %% quantile of nearest-neighbour distances)")
    audit.add_argument("--no-text-detection", action="store_true", help="skip the burned-in text search")
    audit.add_argument("--out", type=Path, default=None, help="report folder (default: DATA_DIR_audit beside it)")
    audit.add_argument("--seed", type=int, default=0, help="seed of the pair sample for the ROC of large releases")
    audit.add_argument("--quiet", action="store_true", help="no progress bars")
    audit.set_defaults(run=_audit)


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    """The commands that prepare data and report results."""
    prepare = commands.add_parser("prepare", help="decode and resize every image once into a uint8 cache")
    prepare.add_argument("data_dir", type=Path, help="a ChestX-ray14 (or phantom) folder")
    prepare.add_argument("--size", type=int, required=True, help="image size of the cache in pixels")
    prepare.add_argument("--cache-dir", type=Path, default=None,
                         help="where to write the cache (default: DATA_DIR/.cxrlib_cache/SIZEpx)")
    prepare.add_argument("--workers", type=int, default=2, help="decoding processes")
    prepare.set_defaults(run=_prepare)

    data = commands.add_parser("data", help="make a profile's data ready: its phantom (unless --data-dir) and cache")
    data.add_argument("--profile", default="cpu", help="smoke, cpu or paper")
    data.add_argument("--data-dir", type=Path, default=None, help="a ChestX-ray14 folder instead of the phantom")
    data.set_defaults(run=_data)

    report = commands.add_parser(
        "report", help="write a run's report: for the reference run the generated sections of README.md and "
                       "data/README.md, for any other run RESULTS/REPORT.md",
        description="The reference run is ./run_all.sh with its defaults: profile cpu on its phantom, seed 42, "
                    "results in ROOT/results/cpu, no --max-steps; whether a run is it is read from the context "
                    "its metrics files recorded and from where they lie.")
    report.add_argument("--profile", default=None,
                        help="the profile the run must have recorded (default: whichever it recorded)")
    report.add_argument("--results", type=Path, default=None,
                        help="the run's results (default: ROOT/results/PROFILE, PROFILE default cpu)")
    report.add_argument("--root", type=Path, default=Path("."),
                        help="the project folder holding README.md and data/README.md (default: here)")
    report.set_defaults(run=_report)


def _add_running_commands(commands: argparse._SubParsersAction) -> None:
    """The commands that run the pipeline, train its models and time its notebooks."""
    run = commands.add_parser(
        "run", help="the whole run (what ./run_all.sh calls): the data, then every notebook and model side by side",
        description="Make the data ready (cxrlib data), then run every job of cxrlib/pipeline.py's table side "
                    "by side: the notebooks with papermill, the models that need no other model with cxrlib "
                    "train; each starts when the jobs it needs are done. A failed job's dependents are "
                    "skipped, the others run to their end, and the exit status is 1. Writes RESULTS/logs/, "
                    "RESULTS/timings.tsv, the report (cxrlib report) and RESULTS/outputs.txt, the list of "
                    "every file the run wrote; what an earlier run wrote in RESULTS is removed first.")
    run.add_argument("--profile", default="cpu", choices=("smoke", "cpu", "paper"), help="what to run")
    run.add_argument("--data-dir", type=Path, default=None,
                     help="a ChestX-ray14 folder (default: the profile's phantom, generated on first use)")
    run.add_argument("--seed", type=int, default=42, help="training and sampling seed")
    run.add_argument("--results", type=Path, default=None,
                     help="output folder (default results/PROFILE; results/PROFILE-NAME for --data-dir .../NAME; "
                          "-dry-run after it for --max-steps)")
    run.add_argument("--artifacts", type=Path, default=None,
                     help="trained models, reused by later runs (default ROOT/artifacts)")
    run.add_argument("--max-steps", type=int, default=None,
                     help="a dry run: every training and evaluation loop capped at N steps")
    run.add_argument("--root", type=Path, default=Path("."), help="the project folder (default: here)")
    run.set_defaults(run=_run)

    train = commands.add_parser("train", help="train (or load) a profile's models that need no other model, "
                                              "into the artifacts folder the notebooks read")
    train.add_argument("models", nargs="+", choices=sorted(trainable()), help="what to train")
    train.add_argument("--profile", default="cpu", help="smoke, cpu or paper")
    train.add_argument("--data-dir", type=Path, default=None, help="a ChestX-ray14 folder instead of the phantom")
    train.add_argument("--seed", type=int, default=42, help="training seed (the notebooks' seed parameter)")
    train.add_argument("--artifacts", type=Path, default=None, help="artifacts folder (default: ROOT/artifacts)")
    train.set_defaults(run=_train)

    timings = commands.add_parser("timings", help="seconds per section of notebooks executed by papermill (TSV: "
                                                  "notebook, section heading, seconds), from their cell timings")
    timings.add_argument("notebooks", type=Path, nargs="+", help="executed notebooks")
    timings.set_defaults(run=_timings)

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except (DataError, ValueError, FileExistsError) as err:
        print(f"cxrlib {args.command}: error: {err}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
