"""The blocks built from the benchmarks' JSON beside the README (measured with the run's profile)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cxrlib.report.loading import ReportError, Results, _context, _count, _minutes, _words

#: the CPU benchmarks' last figures (``benchmarks/bench_cpu_paths.py``, plain and ``--processes 3``),
#: relative to the project root, where the README lies
CPU_PATHS_BENCHMARK = Path("benchmarks/results/cpu_paths.json")
CPU_PROCESSES_BENCHMARK = Path("benchmarks/results/cpu_processes.json")
SAMPLING_PRECISION_BENCHMARK = Path("benchmarks/results/sampling_precision.json")
TRAINING_PRECISION_BENCHMARK = Path("benchmarks/results/training_precision.json")
AUDIT_BENCHMARK = Path("benchmarks/results/audit.json")
#: ``benchmarks/gpu_check.py --profile cpu --json``: the shared loop against an official-style one on a CPU
LOOP_BENCHMARK = Path("benchmarks/results/loop_ratio_cpu.json")
#: ``benchmarks/bench_gap_decomposition.py``: notebook 04's synthetic-only gap split into autoencoder and generator
GAP_DECOMPOSITION_BENCHMARK = Path("benchmarks/results/gap_decomposition.json")
#: ``benchmarks/bench_scale.py --json``: the paper run's cost at ChestX-ray14 scale (no profile: the release's)
SCALE_BENCHMARK = Path("benchmarks/results/scale.json")
RELEASE_IMAGES = 112_120
#: ``benchmarks/bench_sampler.py``: the latent diffusion model's sampler, guidance scale and steps
SAMPLER_SWEEP_BENCHMARK = Path("benchmarks/results/sampler_sweep.json")
#: ``benchmarks/bench_ldm_recipe.py``: how the latent diffusion model is trained, judged by the gap
LDM_RECIPE_BENCHMARK = Path("benchmarks/results/ldm_recipe.json")


def _benchmark(results: Results, path: Path) -> dict | None:
    """A benchmark's JSON beside the README, when it was measured with the run's profile."""
    context = _context(results)
    file = Path(results.get("root", results["link_root"])) / path
    if context is None or not file.is_file():
        return None
    try:
        payload = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{file}: not valid JSON ({err})") from err
    return payload if payload.get("profile") == context["profile"] else None


def cpu_paths_block(results: Results) -> str | None:
    """The CPU's fast paths per network, as ratios to fp32 measured in one run, and the loop overhead."""
    bench = _benchmark(results, CPU_PATHS_BENCHMARK)
    if bench is None:
        return None
    machine, loop = bench["machine"], bench["loop"]
    spread = [round_["overhead"] for round_ in loop["rounds"]]
    variants = [name for name in next(iter(bench["networks"].values())) if name != "fp32"]
    side_by_side = (_benchmark(results, CPU_PROCESSES_BENCHMARK) or {}).get("processes", {})
    batches = bench.get("batches", {})
    header = ["network", *(["batch (train / inference)"] if batches else []), "fp32 img/s (train / inference)",
              *(f"{v} / fp32" for v in variants)]
    if side_by_side:
        header.append("side by side / one process")
    rows = []
    for network, measured in bench["networks"].items():
        batch = batches.get(network)
        row = [network, *([f"{batch['train']} / {batch['inference']}" if batch else ""] if batches else []),
               f"{measured['fp32']['train']:.0f} / {measured['fp32']['inference']:.0f}",
               *(f"{measured[v]['train_ratio']:.2f} / {measured[v]['inference_ratio']:.2f}" for v in variants)]
        if side_by_side:
            row.append(f"{side_by_side[network]['ratio']:.2f}" if network in side_by_side else "")
        rows.append(row)
    table = pd.DataFrame(rows, columns=header).to_markdown(index=False)
    sizes = ("at the batch sizes they train and infer at (the second column)" if batches
             else "at their training batch sizes")
    processes = next(iter(side_by_side.values()), None)
    precision = ("On a CPU that computes bf16 in hardware, like this one, every network trains in bf16 "
                 "autocast (`cxrlib.runtime.autocast`; `CXRLIB_CPU_BF16=0` keeps fp32), with `channels_last` "
                 "where it is faster; elsewhere fp32. The latent diffusion model's attention, and its "
                 "autoencoder's group norms, compute in fp32 inside it (`cxrlib.models.diffusion."
                 "keep_fp32_on_cpu`): their bf16 kernels are slower on a CPU. The U-Net samples in bf16 "
                 "(`cxrlib.synthesis.generate`)."
                 if machine["bf16_flags"] else
                 "On a CPU without bf16 hardware, like this one, every network trains in fp32 (bf16 is "
                 "emulated there), with `channels_last` where it is faster.")
    together = (f" The last column: {processes['processes']} single-thread processes training side by side "
                f"against one process of {processes['threads']} threads, images/s together "
                f"(`{CPU_PROCESSES_BENCHMARK.as_posix()}`)." if processes else "")
    return (f"**The CPU's fast paths** (`benchmarks/bench_cpu_paths.py`, one run with {bench['threads']} "
            f"threads on {machine['cpu']}, {machine['cores']} cores, PyTorch {machine['torch']} with CPU "
            f"capability {machine['torch_cpu_capability']}; `{CPU_PATHS_BENCHMARK.as_posix()}`): the "
            f"training loop `fit` over the cache-backed datasets takes {abs(loop['overhead']):.1%} "
            f"{'longer' if loop['overhead'] >= 0 else 'less time'} than a "
            f"bare loop over the same batches in memory ({loop['fit_train_seconds']:.1f} s against "
            f"{loop['bare_loop_seconds']:.1f} s; the median of {loop['repeats']} rounds, which ranged from "
            f"{min(spread):+.1%} to {max(spread):+.1%}). Throughput of each variant as a ratio to fp32, train / "
            f"inference, the `{bench['profile']}` profile's networks {sizes}; ratios "
            f"below 1 are slower. {precision}{together}\n\n{table}")


def _precision_aucs(bench: dict, source: str) -> str:
    """The sentence comparing the synthetic-only classifiers of the two precisions' sets; ``source``
    names a set, ``{}`` standing for its precision."""
    fp32, bf16 = bench["precisions"]["fp32"], bench["precisions"]["bf16"]

    def aucs(precision: dict) -> str:
        return ", ".join(f"{run['mean_auc']:.3f}" for run in precision["classifiers"])

    return (f"The synthetic-only classifier trained on each set with the same {len(fp32['classifiers'])} seeds "
            f"reaches a test mean AUC of {bf16['mean_auc']:.3f} from {source.format('bf16')} ({aucs(bf16)}) and "
            f"{fp32['mean_auc']:.3f} from {source.format('fp32')} ({aucs(fp32)}): a difference of "
            f"{bench['auc_difference']:+.3f}.")


def _precision_source(bench: dict, path: Path) -> str:
    flag = " --training" if bench.get("compared") == "training" else ""
    return (f"`benchmarks/bench_sampling_precision.py{flag}`, "
            f"{bench['machine']['cpu']}, {bench['threads']} thread{'s' if bench['threads'] != 1 else ''} per "
            f"precision; `{path.as_posix()}`")


def sampling_precision_block(results: Results) -> str | None:
    """The latent diffusion model's sampling in fp32 against bf16: speed, pixels, synthetic-only AUCs."""
    bench = _benchmark(results, SAMPLING_PRECISION_BENCHMARK)
    if bench is None:
        return None
    fp32, bf16, pixels = bench["precisions"]["fp32"], bench["precisions"]["bf16"], bench["pixels"]
    return (f"**Sampling in bf16** ({_precision_source(bench, SAMPLING_PRECISION_BENCHMARK)}): the "
            f"{_count(bench['images'])} images of the synthetic data set, drawn from one seed, took "
            f"{bf16['sampling_seconds']:.0f} s with the U-Net in bf16 against {fp32['sampling_seconds']:.0f} s in "
            f"fp32 ({bench['speedup']:.2f}x). Their pixels differ by {pixels['mean_abs_difference']:.4f} on "
            f"average (images in [0, 1]; {pixels['share_off_by_an_8bit_level']:.1%} of pixels by more than half "
            f"an 8-bit level). {_precision_aucs(bench, '{} samples')}")


def training_precision_block(results: Results) -> str | None:
    """The latent diffusion model trained in fp32 against bf16: time, convergence, synthetic-only AUCs."""
    bench = _benchmark(results, TRAINING_PRECISION_BENCHMARK)
    if bench is None:
        return None
    fp32, bf16 = bench["precisions"]["fp32"], bench["precisions"]["bf16"]

    def part(name: str, label: str) -> str:
        return (f"the {label} {bf16[name]['seconds']:.0f} s against {fp32[name]['seconds']:.0f} s (best epoch "
                f"{bf16[name]['best_epoch']} of {bf16[name]['epochs']} against {fp32[name]['best_epoch']} of "
                f"{fp32[name]['epochs']}; validation loss {bf16[name]['best_val_loss']:.4f} against "
                f"{fp32[name]['best_val_loss']:.4f})")

    return (f"**Training in bf16** ({_precision_source(bench, TRAINING_PRECISION_BENCHMARK)}): the latent "
            f"diffusion model trained once in each precision, side by side, from one seed. In bf16 against fp32: "
            f"{part('autoencoder', 'autoencoder')}, {part('unet', 'U-Net')}; {bench['speedup']:.2f}x as fast "
            f"together (the U-Nets' losses are on the latents of different autoencoders, so they do not "
            f"compare). Each model then drew the {_count(bench['images'])} images of the synthetic data set "
            f"with its U-Net in bf16. {_precision_aucs(bench, 'the model trained in {}')}")


def audit_benchmark_block(results: Results) -> str | None:
    """How long ``cxrlib audit`` takes with the whole attack panel, and its extrapolation to the release."""
    bench = _benchmark(results, AUDIT_BENCHMARK)
    if bench is None:
        return None
    machine, estimate = bench["machine"], bench["release_estimate"]
    against = (f", {bench['against_seconds']:.0f} s with `--against` a folder as large"
               if "against_seconds" in bench else "")
    return (f"**The audit's time** (`benchmarks/bench_audit.py`, {machine['cpu']}, {bench['threads']} "
            f"thread{'s' if bench['threads'] != 1 else ''}; `{AUDIT_BENCHMARK.as_posix()}`): `cxrlib audit` of the "
            f"{_count(bench['images'])} images of the `{bench['profile']}` phantom with all {len(bench['attacks'])} "
            f"attacks of its panel took {bench['internal_seconds']:.0f} s (the panel "
            f"{bench['internal_panel_seconds']:.0f} s){against}. From each part's growth between half and all of the images, the "
            f"{_count(bench['release_images'])} images of the whole release would take about "
            f"{_minutes(estimate['total_seconds'])} on this machine, most of it the {estimate['slowest_part']} "
            f"(about {_minutes(estimate['slowest_part_seconds'])}; its time grew as the number of images to the power "
            f"{estimate['slowest_part_growth_exponent']:.2f}).")




def loop_ratio_block(results: Results) -> str | None:
    """The project's shared training loop against an official-style one (fp32, a PNG decoded per item)."""
    bench = _benchmark(results, LOOP_BENCHMARK)
    if bench is None:
        return None
    parts = [f"the {name} network ({bench[name]['backbone']}, batch {bench[name]['batch']}) "
             f"{bench[name]['shared_loop_images_per_s']:.0f} against {bench[name]['official_style_images_per_s']:.0f} "
             f"images/s ({bench[name]['speedup']:.2f}x)" for name in ("siamese", "classifier")]
    return (f"**The shared loop against an official-style one** (`benchmarks/gpu_check.py --profile "
            f"{bench['profile']}`, {bench['device']}, mixed precision {bench['mixed_precision']}; "
            f"`{LOOP_BENCHMARK.as_posix()}`): trained for {bench['steps']} steps each at {bench['image_size']} px, "
            f"the project's loop (the uint8 cache, Accelerate) against a loop as the papers' code writes it (fp32, "
            f"one PNG decoded and resized per item): {parts[0]} and {parts[1]}.")


def scale_table(report: dict) -> str:
    """The table of ``benchmarks/bench_scale.py``'s figures, from its saved JSON."""
    m, p, r, a = (report[k] for k in ("metadata_splits_pairs", "prepare_throughput", "retrieval_evaluation",
                                      "activation_memory"))
    pairs = ", ".join(f"{n:,} in {s:.1f} s" for n, s in zip(m["pair_counts"], m["pairs_s"].values()))
    hours = ", ".join(f"{h:.1f} h on {c} core{'s' if c != '1' else ''}" for c, h in p["hours_for_release"].items())
    rows = [
        ("metadata (112,120 rows) + official splits", f"{m['metadata_s']:.1f} s + {m['splits_s']:.1f} s"),
        ("verification pairs at the paper's counts", f"{pairs}; peak memory {m['peak_mib']:,.0f} MiB "
                                                     "(metadata included)"),
        ("`cxrlib prepare`, 1024 px PNGs -> 256 px cache", f"{p['images_per_s_one_core']:.1f} images/s per core "
                                                          f"({p['images']} phantom PNGs of {p['png_mib_each']:.2f} MiB)"),
        (f"prepare all {RELEASE_IMAGES:,} images (extrapolated)", hours),
        ("cache size", f"{p['cache_gib']['256']:.1f} GiB at 256 px ({p['cache_gib']['1024']:.0f} GiB at 1024 px)"),
        (f"retrieval evaluation, {r['embeddings']:,} x {r['embeddings']:,} test embeddings ({r['dim']}-d), faiss k-NN",
         f"{r['seconds']:.0f} s, peak memory {r['peak_mib']:,.0f} MiB"),
        ("ResNet-50 training activations (fp32), per image / batch 32",
         "; ".join(f"{s} px: {v['mib_per_image_fp32']:,.0f} MiB / {v['gib_batch_32_fp32']:.1f} GiB"
                   for s, v in a.items())),
    ]
    return "\n".join(["| what | measured |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def scale_block(results: Results) -> str | None:
    """What the ``paper`` run costs at the release's scale (``benchmarks/bench_scale.py``)."""
    file = Path(results.get("root", results["link_root"])) / SCALE_BENCHMARK
    if not file.is_file():
        return None
    try:
        bench = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{file}: not valid JSON ({err})") from err
    return (f"**The `paper` path at ChestX-ray14 scale** (`OMP_NUM_THREADS=1 python benchmarks/bench_scale.py "
            f"--json {SCALE_BENCHMARK.as_posix()}`, {bench['bench_seconds']:.0f} s on {bench['machine']}): each "
            "figure measured in its own process, on the real metadata and official lists, or extrapolated from "
            "a timed sample. The retrieval evaluation's embeddings are synthetic, clustered by the official test "
            "list's patients.\n\n" + scale_table(bench))
#: how the sampler sweep's table and sentences name the samplers of ``cxrlib.synthesis.generate``
SAMPLER_NAMES = {"ddim": "DDIM", "dpm": "DPM-Solver++"}


def _sampler_setting(run: dict) -> str:
    rescale = f", guidance rescale {run['guidance_rescale']:g}" if run.get("guidance_rescale") else ""
    return (f"{SAMPLER_NAMES.get(run['sampler'], run['sampler'])}, guidance scale {run['guidance_scale']:g}, "
            f"{run['steps']} steps{rescale}")


def sampler_sweep_block(results: Results) -> str | None:
    """The sampler sweep: per setting the Fréchet distance, the rendering AUC and the seconds per image,
    and which setting is best by each."""
    bench = _benchmark(results, SAMPLER_SWEEP_BENCHMARK)
    if bench is None:
        return None
    runs, machine = bench["runs"], bench["machine"]
    best = {"the lowest Fréchet distance": _sampler_setting(min(runs, key=lambda run: run["frechet_distance"])),
            "the highest rendering AUC": _sampler_setting(max(runs, key=lambda run: run["rendering_auc"]))}
    timing = bench.get("timing")
    if timing is None:
        best["the fastest"] = _sampler_setting(min(runs, key=lambda run: run["seconds_per_image"]))
    else:  # the side-by-side times: the sweep's own drift with the machine's load
        sampler, steps = min(((sampler, steps) for sampler, per_steps in timing["seconds_per_image"].items()
                              for steps in per_steps), key=lambda key: timing["seconds_per_image"][key[0]][key[1]])
        best["the fastest (side by side)"] = f"{SAMPLER_NAMES.get(sampler, sampler)} at {steps} steps"
    best["the lowest sum of both ranks"] = _sampler_setting(bench["best_by_ranks"])
    positives = bench["positives"]
    shortfall = [f"{finding} has {count}" for finding, count in positives.items() if count < bench["min_positives"]]
    short = f" ({_words(shortfall)})" if shortfall else ""
    rescaled = [run for run in runs if run.get("guidance_rescale")]
    plain = {(run["sampler"], run["guidance_scale"], run["steps"]): run for run in runs if not run.get("guidance_rescale")}
    rescale_parts = []
    for run in rescaled:
        without = plain.get((run["sampler"], run["guidance_scale"], run["steps"]))
        if without is not None:
            rescale_parts.append(
                f"at {_sampler_setting({**run, 'guidance_rescale': 0})} it moves the Fréchet distance from "
                f"{without['frechet_distance']:.2f} to {run['frechet_distance']:.2f} and the rendering AUC from "
                f"{without['rendering_auc']:.3f} to {run['rendering_auc']:.3f}")
    rescale = (f" Guidance rescale {rescaled[0]['guidance_rescale']:g} (Lin et al. 2024): "
               f"{'; '.join(rescale_parts)}." if rescale_parts else "")
    profile_setting = bench["profile_setting"]
    seeds = bench.get("seed_spread")
    spread = (f" Drawn from {len(seeds['seeds'])} seeds at the profile's setting, the same label vectors gave a "
              f"Fréchet distance from {min(seeds['frechet_distance']):.2f} to {max(seeds['frechet_distance']):.2f} "
              f"and a rendering AUC from {min(seeds['rendering_auc']):.3f} to {max(seeds['rendering_auc']):.3f}: "
              f"how far one setting's figures move from draw to draw (the settings above share one draw's initial "
              f"noise)." if seeds and len(seeds["seeds"]) > 1 else "")
    timed = ("" if timing is None else
             f" Timed side by side, the fastest of {timing['repeats']} rounds over {timing['images']} images that "
             f"each draw every setting in turn (other jobs shared the machine, so the sweep's own times drift with "
             f"their load): " + "; ".join(
                 f"{SAMPLER_NAMES.get(sampler, sampler)} {_words([f'{value:.3f}' for value in per_steps.values()])} "
                 f"s per image at {_words(list(per_steps))} steps"
                 for sampler, per_steps in timing["seconds_per_image"].items()) + ".")
    table = pd.DataFrame([{
        "sampler": SAMPLER_NAMES.get(run["sampler"], run["sampler"]), "guidance scale": f"{run['guidance_scale']:g}",
        "steps": run["steps"], "guidance rescale": f"{run.get('guidance_rescale', 0):g}",
        "Fréchet distance": f"{run['frechet_distance']:.2f}", "rendering AUC": f"{run['rendering_auc']:.3f}",
        "s / image (sweep)": f"{run['seconds_per_image']:.3f}"} for run in runs
    ]).to_markdown(index=False, disable_numparse=True)  # as formatted: 18.00, not 18
    threads = bench["threads"]
    return (f"**The sampler** (`benchmarks/bench_sampler.py`, {machine['cpu']}, {threads} "
            f"thread{'s' if threads != 1 else ''}; `{SAMPLER_SWEEP_BENCHMARK.as_posix()}`): the `{bench['profile']}` "
            f"run's latent diffusion model drew {_count(bench['images'])} images with each setting, from one seed, "
            f"for label vectors of the training split chosen so that each finding has at least "
            f"{bench['min_positives']} positives where the split has as many{short}. The classifier "
            f"trained on real images judges them: the Fréchet distance in its features to the "
            f"{_count(bench['test_images'])} real test images (the real training images of the same label vectors: "
            f"{bench['real_training_images']['frechet_distance']:.2f}), and its mean AUC on the synthetic images "
            f"against the labels they were drawn for, the rendering AUC (on the real test images it reaches "
            f"{bench['real_test_images']['auc']:.3f}). Best by "
            + "; ".join(f"{criterion}: {setting}" for criterion, setting in best.items())
            + f". The profile samples with {_sampler_setting(profile_setting)}.{spread}{rescale}{timed}\n\n{table}")


def _plus_minus(spread: dict, digits: int = 3) -> str:
    return f"{spread['mean']:.{digits}f} ± {spread['std']:.{digits}f}"


def gap_decomposition_table(summary: dict) -> str:
    """Per finding, the four classifiers' test AUCs, the gaps in AUC points and the rendering AUC (means
    over seeds), the findings that lose most first; above them the mean over findings with its spread."""
    # (where the figure sits per finding, where its mean over findings sits, digits: AUCs 3, points 1)
    columns = [(part, ("auc", part), 3) for part in ("real", "real_on_reconstructed", "reconstructed", "synthetic")]
    columns += [(f"gap_{gap}", ("gap_points", gap), 1)
                for gap in ("synthetic_only", "autoencoder_in_training", "generator", "autoencoder_at_test")]
    columns.append(("rendering", ("rendering_auc",), 3))
    header = ("| finding | (a) real | (b) real on reconstructed test images | (c) trained on reconstructions "
              "| (d) synthetic only | a − d | a − c (autoencoder) | c − d (generator) | a − b "
              "| rendering AUC |")

    def cell(spread: dict, digits: int, with_spread: bool = False) -> str:
        if spread["mean"] is None:  # a finding without positive test images has no AUC
            return "–"
        return _plus_minus(spread, digits) if with_spread else f"{spread['mean']:.{digits}f}"

    def overall(keys: tuple[str, ...]) -> dict:
        figure = summary
        for key in keys:
            figure = figure[key]
        return figure

    rows = ["| mean over findings (± SD over seeds) | "
            + " | ".join(cell(overall(keys), digits, True) for _, keys, digits in columns) + " |"]

    def loss(finding: str) -> float:
        value = summary["per_finding"][finding]["gap_synthetic_only"]["mean"]
        return float("-inf") if value is None else value

    for finding in sorted(summary["per_finding"], key=loss, reverse=True):
        figures = summary["per_finding"][finding]
        rows.append(f"| {finding} | " + " | ".join(cell(figures[name], digits) for name, _, digits in columns) + " |")
    return "\n".join([header, "|---" * (len(columns) + 1) + "|", *rows])


def gap_decomposition_block(results: Results) -> str | None:
    """Notebook 04's synthetic-only gap split into what the autoencoder and the generator lose, per finding,
    over classifier seeds (``cxrlib.synthesis.gap_decomposition``)."""
    bench = _benchmark(results, GAP_DECOMPOSITION_BENCHMARK)
    if bench is None:
        return None
    summary, synthetic, gaps = bench["summary"], bench["synthetic_set"], bench["summary"]["gap_points"]
    seeds = summary["seeds"]
    worst = ", ".join(f"{finding} ({summary['per_finding'][finding]['gap_synthetic_only']['mean']:.1f}: autoencoder "
                      f"{summary['per_finding'][finding]['gap_autoencoder_in_training']['mean']:.1f}, generator "
                      f"{summary['per_finding'][finding]['gap_generator']['mean']:.1f})"
                      for finding in bench["worst_findings"][:3])
    filtered = ("with the privacy filter" if synthetic["privacy_filter"] else
                "without the privacy filter (its first draw, as notebook 04's; the few images the filter would "
                "draw again are kept)")
    # a classifier loaded from the finished run, not trained by the benchmark, is named
    reused = [f"the {kind} classifier of seed {seed}" for kind, per_seed in bench.get("classifiers", {}).items()
              for seed, record in per_seed.items() if record.get("from_reference")]
    loaded = f" ({', '.join(reused)} is the finished run's, loaded)" if reused else ""
    return (f"**The synthetic-only gap decomposed** (`benchmarks/bench_gap_decomposition.py`, "
            f"{bench['machine']['cpu']}, {bench['threads']} thread{'s' if bench['threads'] != 1 else ''}, "
            f"{_minutes(bench['seconds']['total'])}; "
            f"`{GAP_DECOMPOSITION_BENCHMARK.as_posix()}`): on the `{bench['profile']}` phantom's trained latent "
            f"diffusion model, {len(seeds)} classifier seeds ({', '.join(map(str, seeds))}), each classifier trained "
            f"with the profile's recipe: (a) on real images, (b) the same scored on the test images through the "
            f"autoencoder, (c) on the autoencoder's reconstructions of the real training images, (d) on "
            f"{_count(synthetic['training'])} synthetic images only, drawn for notebook 04's conditions "
            f"({synthetic['sampling_steps']} DDIM steps, guidance {synthetic['guidance_scale']:g}) {filtered}. "
            f"All are scored on the same {_count(bench['decomposition']['test_images'])} real test "
            f"images{loaded}. Of the "
            f"synthetic-only gap of {_plus_minus(gaps['synthetic_only'], digits=1)} AUC points (mean ± SD over "
            f"seeds), training on the autoencoder's output accounts for "
            f"{_plus_minus(gaps['autoencoder_in_training'], digits=1)} (a − c) and the generator for "
            f"{_plus_minus(gaps['generator'], digits=1)} (c − d); the real classifier loses "
            f"{_plus_minus(gaps['autoencoder_at_test'], digits=1)} on reconstructed test images (a − b). The "
            f"rendering AUC (the real classifier on the synthetic images against the labels they were drawn for) "
            f"is {_plus_minus(summary['rendering_auc'])}. The findings that lose most (points): {worst}.\n\n"
            + gap_decomposition_table(summary))


def _recipe_row(name: str, recipe: dict) -> str:
    settings, training, gaps = recipe["settings"], recipe["training"], recipe["summary"]["gap_points"]
    unet = training["unet"]
    schedule = (f"cosine, warm-up {settings['unet_warmup_steps']} steps, fixed budget"
                if settings["unet_lr_schedule"] == "cosine" else
                f"constant; stops after {settings['patience']} epochs without a {settings['min_improvement']:.0%} gain")
    balance = {0.0: "uniform", 1.0: "inverse prevalence"}.get(settings["unet_class_balance"],
                                                             f"inverse prevalence ^ {settings['unet_class_balance']:g}")
    several = len(recipe["summary"]["seeds"]) > 1

    def points(name: str) -> str:  # mean, with its SD over seeds where there are several
        return _plus_minus(gaps[name], digits=1) if several else f"{gaps[name]['mean']:.1f}"

    cells = [f"`{name}`", " / ".join(map(str, settings["unet_channels"])), schedule, balance,
             f"{settings['autoencoder_edge_weight']:g}", f"{unet['epochs']} of {unet['max_epochs']}",
             f"{training['autoencoder']['seconds'] / 60:.0f} / {unet['seconds'] / 60:.0f}",
             f"{recipe['validation_reconstruction']['psnr']:.2f}",
             f"{recipe['frechet_distance']:.2f}", f"{recipe['summary']['rendering_auc']['mean']:.3f}",
             str(len(recipe["summary"]["seeds"])), points("autoencoder_in_training"), points("generator"),
             f"**{points('synthetic_only')}**"]
    return "| " + " | ".join(cells) + " |"


def ldm_recipe_block(results: Results) -> str | None:
    """The latent diffusion model's training recipes, each judged by notebook 04's gap decomposition."""
    bench = _benchmark(results, LDM_RECIPE_BENCHMARK)
    if bench is None:
        return None
    recipes = bench["recipes"]
    seeds = sorted({seed for recipe in recipes.values() for seed in recipe["summary"]["seeds"]})
    header = ("| recipe | U-Net widths | learning rate | batches | autoencoder edge weight | U-Net epochs (run of cap) "
              "| training min (autoencoder / U-Net) | PSNR (dB) | Fréchet distance | rendering AUC | classifier seeds | a − c (autoencoder) "
              "| c − d (generator) | a − d (synthetic-only gap) |")
    gap = {name: recipe["summary"]["gap_points"]["synthetic_only"]["mean"] for name, recipe in recipes.items()}
    # the profile's own recipe first, the others from the smallest gap
    order = sorted(recipes, key=lambda name: (name != "profile", gap[name]))
    rows = [_recipe_row(name, recipes[name]) for name in order]
    best = min(gap, key=gap.get)
    spreads = [recipe["summary"]["gap_points"]["synthetic_only"]["std"] for recipe in recipes.values()
               if len(recipe["summary"]["seeds"]) > 1]
    noise = (f" Between classifier seeds one model's gap moves by an SD of {min(spreads):.1f} to {max(spreads):.1f} "
             f"points (the recipes judged over several seeds)." if spreads else "")
    noise += (" Each recipe trained once: how far a second training of the same recipe would move its figures is "
              "not in them.")
    machines = sorted({recipe.get("machine", bench["machine"])["cpu"] for recipe in recipes.values()})
    return (f"**How the latent diffusion model is trained** (`benchmarks/bench_ldm_recipe.py`, {_words(machines)}, "
            f"{bench['threads']} thread per process, processes side by side; `{LDM_RECIPE_BENCHMARK.as_posix()}`): "
            f"each recipe trains its autoencoder and U-Net on the `{bench['profile']}` phantom and is judged as notebook "
            f"04 judges its model, by the gap decomposition over its classifier seeds (of {', '.join(map(str, seeds))}; "
            f"the gaps are means, ± the SD over seeds where there are several), on "
            f"notebook 04's synthetic set drawn without the privacy filter. The fixed budget is {bench['budget_epochs']} "
            f"epochs, the U-Net epochs of the reference run; the wider U-Net runs as many epochs as cost about the "
            f"same CPU time, from a timed probe of both. Training minutes are the sums of the epochs' wall times, one thread "
            f"per process (a part another recipe trained counts with its own training). (a) real, (c) trained on reconstructions, (d) synthetic only, "
            f"in AUC points; the Fréchet distance of the synthetic training images to the real test images in the real "
            f"classifier's features. The lowest synthetic-only gap: `{best}`, {gap[best]:.1f} points."
            f"{noise}\n\n" + "\n".join([header, "|---" * 14 + "|", *rows]))
