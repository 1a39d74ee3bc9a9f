"""The blocks of the results section built from the run's metrics JSON: one function per paragraph or
table, each returning None when the run did not write what it needs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cxrlib.anonymize.flow_field import displacement_bound_pixels
from cxrlib.evaluate import PUBLISHED, comparison_table
from cxrlib.plots.reid import comparison_table as reidentification_table
from cxrlib.plots.reid import identity_cue_table
from cxrlib.report.loading import (REIDENTIFICATION_COLUMNS, RESULT_FILES, Results, _at, _context, _count, _gap_bin,
                                   _has, _link, _minutes, _number, _signed, _words, load_results)

def run_block(results: Results) -> str | None:
    context = _context(results)
    if context is None or "data" not in results:
        return None
    timings = results.get("timings", {})
    notebooks = [s for name, s in sorted(timings.items()) if name.endswith(".ipynb")]  # 00 to 05
    # run_all.sh's other jobs: models trained beside the notebooks ("train ldm")
    beside = {name: s for name, s in timings.items() if name != "total" and not name.endswith(".ipynb")}
    when = ""
    if notebooks:
        jobs = f"; {_words([f'`{name}` {s} s' for name, s in beside.items()])} beside them" \
            if beside else ""
        machine = context.get("machine")
        where = "" if machine is None else \
            f" on {machine['cpu']} ({machine['cores']} cores{', ' + machine['gpu'] if machine['gpu'] else ''})"
        cpu = results.get("cpu_seconds", {}).get("total")
        # the jobs' CPU time over the cores: no schedule of the same work on these cores ends sooner
        busy = "" if cpu is None or machine is None else \
            (f"; the jobs kept the cores busy for {_count(cpu)} CPU seconds, so on {machine['cores']} cores no "
             f"order of the jobs ends before {_minutes(cpu / machine['cores'])}")
        when = (f" ({_minutes(timings.get('total', sum(notebooks)))}{where} with the phantom already made: the "
                f"{_number(len(notebooks))} notebooks {_words([str(s) for s in notebooks])} s{jobs}{busy}, "
                f"`{_link(results, 'timings.tsv')}`)")
    working = results["data"]["working_data"]
    kind = "the phantom" if context.get("phantom") else "ChestX-ray14"
    if context.get("bf16"):
        when += (" in bf16 autocast (every network; the latent diffusion model keeps its attention and its "
                 "autoencoder's group norms in fp32)")
    caveat = (" the networks are small and trained for minutes: the numbers show the papers' qualitative "
              "picture, not their values, which need ChestX-ray14 and the `paper` profile."
              if context.get("phantom") else "")
    kept = "committed under" if results.get("reference", True) else "written to"
    return (f"What `./run_all.sh` produced{when}, {kept} [`{_link(results)}`]({_link(results)}) "
            f"with every figure, metric (JSON), table and executed notebook. The data is {kind} "
            f"({_count(working['patients'])} patients, {_count(working['images'])} images, "
            f"{context['image_size']} px),{caveat}")


def training_records(results: Results) -> dict[str, list[Mapping[str, Any]]]:
    """Every training's record (:func:`cxrlib.train.training_record`) in the metrics files, grouped by
    where it sits: ``file.key.key`` with ``[]`` for the runs of a list, a trailing ``.training`` dropped."""
    found: dict[str, list[Mapping[str, Any]]] = {}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, Mapping):
            if "ended_by" in value:
                found.setdefault(where.removesuffix(".training"), []).append(value)
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for item in value:
                walk(item, f"{where}[]")

    for name in RESULT_FILES:
        walk(results.get(name), name)
    return found


def training_block(results: Results) -> str | None:
    records = training_records(results)
    if not records:
        return None

    def span(runs: Sequence[Mapping[str, Any]], key: str) -> str:
        values = sorted({run[key] for run in runs})
        return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"

    rows = [[f"`{where}`", len(runs),
             ", ".join(f"{ended} {sum(run['ended_by'] == ended for run in runs)}"
                       for ended in sorted({run["ended_by"] for run in runs})),
             span(runs, "best_epoch"), span(runs, "epochs"), span(runs, "max_epochs")]
            for where, runs in records.items()]
    table = pd.DataFrame(rows, columns=["training (where its record is)", "runs", "ended by", "best epoch",
                                        "epochs run", "cap"]).to_markdown(index=False)
    runs = [run for group in records.values() for run in group]
    ended = {kind: sum(run["ended_by"] == kind for run in runs)
             for kind in ("early stopping", "epoch cap", "fixed budget")}
    return (f"**How each training ended** (every model's record in the metrics files): {ended['early stopping']} "
            f"of {len(runs)} trainings stopped early, when their validation loss had stopped improving for "
            f"their patience; {ended['epoch cap']} ran into their epoch cap and may still have been learning; "
            f"{ended['fixed budget']} had a fixed budget (a schedule run to its end, or a patience not below "
            f"the cap).\n\n{table}")


def reidentification_block(results: Results) -> str | None:
    if "reidentification" not in results:
        return None
    reid = results["reidentification"]
    low, high = reid["verification"]["auc_ci"]
    runs = reid["verification_runs"]
    gaps = [f"{row['auc']:.3f} ({_gap_bin(row['bin'])})" for row in reid["auc_by_age_gap"]
            if math.isfinite(row["high"])]
    linkage = reid.get("linkage_attack")
    attack = ("" if linkage is None else
              " The linkage attack, ranking every other test image by the retrieval embedding, puts an image of "
              f"the same patient first for {100 * linkage['rank_1']:.1f} % of {_count(linkage['queries'])} "
              f"queries and among the first five for {100 * linkage['rank_5']:.1f} %.")
    # a folder without the phantom's truth does not know where text is burned in (notebook 01 skips it)
    boxes = ("" if not reid.get("text_boxes") else
             f" Black boxes over the burned-in text change the AUC by {_signed(reid['text_boxes']['auc_change'], 3)}.")
    return (f"**Re-identification** (notebook 01; seed {reid['context']['seed']}, bootstrap 95 % CI of the AUC "
            f"{low:.3f}–{high:.3f}; {_number(len(runs['runs']))} seeds: AUC {runs['mean']['auc']:.3f} ± "
            f"{runs['std']['auc']:.3f}).{boxes} By years between the two scans the AUC is "
            f"{_words(gaps)}.{attack}")


def reidentification_table_block(results: Results) -> str | None:
    if "reidentification" not in results:
        return None
    reid = results["reidentification"]
    columns = {}
    for i, (label, rows) in enumerate(REIDENTIFICATION_COLUMNS.items()):
        name = f"{label}: {reid['context']['data']}" if i == 0 else label
        values = {metric: _at(reid, path) for metric, path in rows.items() if _has(reid, path)}
        if values:  # a run of older code may lack a column's figures
            columns[name] = values
    return reidentification_table(columns).round(4).to_markdown(index=False)


def identity_cues_block(results: Results) -> str | None:
    """What identifies and what does not: every cue of notebook 01 on the same held-out pairs."""
    if "reidentification" not in results or "identity_cues" not in results["reidentification"]:
        return None
    reid = results["reidentification"]
    table = identity_cue_table(reid["identity_cues"])
    runs = reid["verification_runs"]
    per_seed = ", ".join(f"{run['auc']:.3f}" for run in runs["runs"])
    return (f"On the held-out test patients of notebook 01 ({reid['context']['data']}), the same "
            "balanced test pairs for every cue and every test image as a retrieval query:\n\n"
            + table.round(3).to_markdown(index=False)
            + f"\n\nThe siamese network over {_number(len(runs['runs']))} training seeds: verification AUC "
            f"{runs['mean']['auc']:.3f} ± {runs['std']['auc']:.3f} ({per_seed})."
            + _panel_sentence(reid.get("attack_panel")))


def _panel_sentence(payload: dict | None) -> str:
    """Notebook 01's panel of linkage attacks: its worst case beside chance."""
    if payload is None:
        return ""
    from cxrlib.linkage import LinkagePanel

    panel = LinkagePanel.from_json(payload)
    worst = panel.worst_case()
    p1, auc = worst["precision_at_1"], worst["auc"]
    return (f" The panel of {len(panel.attacks)} linkage attacks (every test image queried among the "
            f"{_count(panel.gallery)} others; `cxrlib.linkage`): the strongest by P@1 is the {p1.label}, "
            f"{p1.value:.3f} (95 % CI {p1.ci[0]:.3f}–{p1.ci[1]:.3f}; chance {p1.chance:.3f}); by AUC the "
            f"{auc.label}, {auc.value:.3f} ({auc.ci[0]:.3f}–{auc.ci[1]:.3f}; chance 0.5).")


def identity_profile_block(results: Results) -> str | None:
    """The phantom held against real radiographs: each training-free cue's AUC with its patient-bootstrap
    CI on both (notebook 00, :func:`cxrlib.attacks.identity_profile`)."""
    profiles = results.get("data", {}).get("identity_profiles")
    if not profiles or len(profiles) < 2:  # real data with no phantom to hold it against
        return None
    from cxrlib.attacks import IdentityProfile

    phantom, real = (IdentityProfile.from_json(p) for p in profiles)
    inside = phantom.inside(real)
    rows = [{"cue": cue.label,
             f"{phantom.data} AUC (95 % CI)": f"{cue.auc:.3f} ({cue.ci_low:.3f}–{cue.ci_high:.3f})",
             f"{real.data} AUC (95 % CI)": (f"{real.cue(cue.attack).auc:.3f} ({real.cue(cue.attack).ci_low:.3f}–"
                                            f"{real.cue(cue.attack).ci_high:.3f})"),
             "inside the real CI": "yes" if inside[cue.attack] else "**no**"} for cue in phantom.cues]
    return (f"**The phantom against real radiographs** (notebook 00): what identifies a patient without any "
            f"training, on every patient with two or more images ({_count(phantom.patients)} phantom patients, "
            f"{_count(real.patients)} real), {_count(phantom.same_patient_pairs)} same-patient and as many "
            "different-patient pairs that weigh every patient alike, verification AUC with a 95 % CI from a "
            f"bootstrap over patients. {sum(inside.values())} of {len(inside)} phantom cues lie within the real "
            "CI.\n\n" + pd.DataFrame(rows).to_markdown(index=False))


#: the sample's results folder beside the reference run's (``./run_all.sh --data-dir data/chestxray14-sample``)
REAL_SAMPLE_RESULTS = "cpu-chestxray14-sample"

#: the key figures of a run, side by side for the phantom and the real sample: label -> (file, path)
KEY_FIGURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "siamese verification AUC (mean of seeds)": ("reidentification", ("verification_runs", "mean", "auc")),
    "retrieval P@1": ("reidentification", ("retrieval", "precision_at_1")),
    "pixel correlation AUC (no training)": ("reidentification", ("identity_cues", "raw_pixels", "verification", "auc")),
    "pixel correlation P@1 (no training)": ("reidentification",
                                            ("identity_cues", "raw_pixels", "retrieval", "precision_at_1")),
    "classifier mean AUC (real training images)": ("synthesis", ("utility", "real", "mean_auc")),
    "classifier mean AUC (synthetic training images only)": ("synthesis", ("utility", "synthetic", "mean_auc")),
}


def real_sample_block(results: Results) -> str | None:
    """The reference run's key figures beside those of the real sample's run, once that run has succeeded.

    A finished run lists its files in ``outputs.txt``, and one whose every job succeeded also wrote
    ``timings.tsv``; a folder without both (a run in progress, or one that failed) is left out, so the
    README never shows a half-written or failed run's figures."""
    folder = Path(results["directory"]).parent / REAL_SAMPLE_RESULTS
    if Path(results["directory"]).name == REAL_SAMPLE_RESULTS or not all(
            (folder / name).is_file() for name in ("outputs.txt", "timings.tsv")):
        return None
    sample = load_results(folder)
    rows = []
    for label, (name, path) in KEY_FIGURES.items():
        values = [(_at(run[name], path) if name in run and _has(run[name], path) else None) for run in (results, sample)]
        if any(v is not None for v in values):
            rows.append({"figure": label, **{column: "–" if v is None else f"{v:.3f}"
                                            for column, v in zip(("phantom (cpu)", "real sample (cpu)"), values)}})
    test_patients = sample.get("data", {}).get("splits", {}).get("test", {}).get("patients")
    return ("**The same notebooks on real radiographs** (`./run_all.sh --data-dir data/chestxray14-sample`, "
            f"results in [`results/{REAL_SAMPLE_RESULTS}/`]({_link({**results, 'directory': folder})})): the 690 "
            "training images of the sample are too few for the `cpu` networks"
            + (f", and its official test part holds {test_patients} patients with long series" if test_patients else "")
            + ", so read its figures as a check that every step runs on real pixels, and beside the attacks that "
            "need no training.\n\n" + pd.DataFrame(rows).to_markdown(index=False))


def lung_fields_block(results: Results) -> str | None:
    """Where the phantom's lung fields lie outside the real masks' range (notebook 00)."""
    lungs = results.get("data", {}).get("lung_fields")
    if not lungs or lungs.get("comparison") is None:
        return None
    outside = lungs["outside_real_range"]
    found = "; ".join(f"**{name.replace('_', ' ')}** {text}" for name, text in outside.items())
    return (f"Notebook 00 compares the phantom's lung fields with the {_count(lungs['real_masks'])} real lung "
            f"masks shipped in torchxrayvision ({_count(lungs['real_masks_with_two_lungs'])} show two lungs). "
            + (f"More than 10 % of the phantom's scans lie outside the real central 95 % for: {found}."
               if outside else "Every statistic of the phantom lies within the real central 95 %.")
            + " Heights, widths and centroids not named lie within the real range.")


def tradeoff_block(results: Results) -> str | None:
    if "tradeoff" not in results:
        return None
    runs = {len(r["privacy"]["attack_runs"]) for r in results["tradeoff"]["results"]}
    text = ("**Anonymization: privacy against utility** (notebooks 02, 03). Attack AUC: a fresh siamese "
            "network re-trained on anonymized images, tested on (anonymized, real) pairs of unseen patients, "
            f"mean ± std of {'/'.join(map(str, sorted(runs)))} runs; utility: the classifier trained on real "
            "images, frozen, on anonymized test images.")
    if any("panel" in r["privacy"] for r in results["tradeoff"]["results"]):
        text += (" Worst case: the strongest attack of the panel (the frozen siamese and retrieval networks, the "
                 "first re-trained attacker and every attack that needs no training), each anonymized test "
                 "image searched among the original test images with its own source left out; its AUC with a "
                 "patient-bootstrap 95 % CI, its P@1 beside chance in brackets. Privacy is read from the worst "
                 "case, never from one attacker.")
    return text


def tradeoff_table_block(results: Results) -> str | None:
    if "tradeoff" not in results:
        return None
    return comparison_table(_with_recorded_displacement(results)).to_markdown(index=False)


def _recorded_displacement(results: Results) -> dict[float, float]:
    """The largest displacement in pixels of each mu, as the run that trained it recorded it."""
    return {row["mu"]: row["max_displacement_px"] for row in results.get("prichexy_net", {}).get("per_mu", [])
            if "max_displacement_px" in row}


def _with_recorded_displacement(results: Results) -> list[dict]:
    """The trade-off results with each PriCheXy-Net row's recorded displacement bound in its params, so that
    a run is described by the geometry it ran with, not by the code's current rule."""
    recorded = _recorded_displacement(results)
    return [{**r, "params": {**r["params"], "max_displacement_px": recorded[r["params"]["mu"]]}}
            if r["method"] == "flow_field" and r["params"].get("mu") in recorded else r
            for r in results["tradeoff"]["results"]]


def tradeoff_reading_block(results: Results) -> str | None:
    """What the table says, in words; each claim only where the run's numbers bear it out."""
    if "tradeoff" not in results:
        return None
    tradeoff = results["tradeoff"]
    summary, expectations = tradeoff["summary"], tradeoff["summary"]["expectations"]
    flow = [r for r in tradeoff["results"] if r["method"] == "flow_field"]
    if not flow:
        return None
    published = [PUBLISHED[m][0].split(" ")[0] for m in ("identity", "flow_field")]
    data = "this phantom" if tradeoff["context"].get("phantom") else "this data"
    keeps = "keeps" if expectations["prichexy_utility_loss_at_most_3_points"] else "does not keep"
    hides = ("hides the patient" if expectations["prichexy_attack_drop_at_least_15_points"]
             else "barely hides the patient")
    near = "near" if expectations["prichexy_attack_drop_at_least_15_points"] else "far from"
    text = (f"On {data} PriCheXy-Net {keeps} the findings ({_signed(-100 * summary['prichexy_utility_loss'], 1)} "
            f"AUC points at its largest mu) but {hides} from a re-trained attacker "
            f"({_signed(-100 * summary['prichexy_attack_auc_drop'], 1)} points), {near} the paper's "
            f"{published[0]} → {published[1]}")
    hide_more = all(d > summary["prichexy_attack_auc_drop"] for d in summary["baseline_attack_auc_drop"].values())
    lose_more = expectations["baselines_lose_more_utility"]
    far = min(summary["baseline_utility_loss"].values()) >= 3 * max(summary["prichexy_utility_loss"], 1e-9)
    if hide_more or lose_more:
        clauses = (["hide more"] if hide_more else []) + ([f"lose {'far ' if far else ''}more utility"]
                                                         if lose_more else [])
        text += f"; the baselines {' and '.join(clauses)}"
    text += "."
    largest = max(flow, key=lambda r: r["params"]["mu"])["params"]
    papers = displacement_bound_pixels(largest["mu"])
    moved = _recorded_displacement(results).get(largest["mu"], papers)
    text += (f" PriCheXy-Net's largest mu ({largest['mu']:g}) moves a pixel by at most {moved:.2f} px at "
             f"{largest['image_size']} px, " + ("as the paper's at 256 px" if abs(moved - papers) < 1e-6 * papers
                                                else f"not the paper's {papers:.2f} px (a run of an older geometry)"))
    per_mu = results.get("prichexy_net", {}).get("per_mu")
    if per_mu and all("min_jacobian_determinant" in row for row in per_mu):
        smallest = min(row["min_jacobian_determinant"] for row in per_mu)
        text += f"; the smallest Jacobian determinant of its learned fields is {smallest:.3f}, so no field folds"
        if all("jacobian_lower_bound" in row for row in per_mu):
            bound = min(row["jacobian_lower_bound"] for row in per_mu)
            text += (f", and none can: at this geometry the determinant of any generator's field is at least "
                     f"{bound:.3f}" if bound > 0 else
                     f"; at this geometry a generator could fold (guaranteed bound {bound:.3f})")
    text += "."
    return text + _prichexy_schedule_sentence(results.get("prichexy_net", {}))


def _prichexy_schedule_sentence(prichexy: dict) -> str:
    """The schedule, the frozen network's validation AUC over it, and the frozen-adversaries diagnostic."""
    schedule, diagnostic = prichexy.get("schedule"), prichexy.get("diagnostic_frozen_adversaries")
    if not schedule or not diagnostic:
        return ""
    largest = max(prichexy["per_mu"], key=lambda row: row["mu"])
    return (f" Notebook 02 trains each mu for {schedule['epochs']} epochs of {schedule['steps_per_epoch']} generator "
            f"steps (the paper about 39,000 steps) and keeps the lowest validation total; at mu = {largest['mu']:g} the "
            f"frozen siamese network's validation AUC was {largest['frozen_val_auc_kept']:.3f} at the kept epoch "
            f"({largest['frozen_val_auc_lowest']:.3f} at its lowest, {prichexy['frozen_val_auc_original']:.3f} on the "
            f"original pairs). Trained against the frozen networks alone (the diagnostic), the generator brought it to "
            f"{diagnostic['frozen_val_auc_lowest']:.3f} at its lowest and {diagnostic['frozen_snn_auc']:.3f} on the test "
            f"pairs (95 % CI {diagnostic['frozen_snn_auc_ci'][0]:.3f}-{diagnostic['frozen_snn_auc_ci'][1]:.3f}).")


def tradeoff_figure_block(results: Results) -> str | None:
    figure = Path(results["directory"]) / "figures" / "tradeoff.png"
    return f"![privacy vs utility]({_link(results, 'figures/tradeoff.png')})" if figure.is_file() else None


def synthesis_block(results: Results) -> str | None:
    if "synthesis" not in results:
        return None
    synthesis = results["synthesis"]
    utility = synthesis["utility"]
    real, synthetic = utility["real"], utility["synthetic"]
    sampler = synthesis["sampler"]
    planted = {kind: rates for kind, rates in synthesis["planted_copies"].items() if "linked to its source" in rates}
    caught = min(rates["rejected"] for rates in planted.values())
    return (f"**Synthesis** (notebook 04): a classifier trained on "
            f"{_count(synthesis['synthetic_classifier']['training_images'])} synthetic images only reaches mean "
            f"AUC {synthetic['mean_auc']:.3f} ({synthetic['ci'][0]:.3f}–{synthetic['ci'][1]:.3f}) on real test "
            f"images against {real['mean_auc']:.3f} ({real['ci'][0]:.3f}–{real['ci'][1]:.3f}) for the same "
            f"classifier trained on real images, a gap of {utility['gap_points']:.1f} points "
            f"({utility['gap_percent_of_real']:.1f} % of the real AUC; published: "
            f"{utility['published_gap_percent']:g} %)." + _decomposition_sentence(synthesis.get("gap_decomposition"))
            + " The privacy-enhancing sampler rejected "
            f"{100 * sampler['rejection_rate']:.1f} % of {_count(sampler['drawn'])} drawn samples, and "
            f"{100 * caught:.0f} % of planted copies of training images ({', '.join(planted)})."
            + _memorization_sentence(synthesis.get("memorization_panel")))


def _decomposition_sentence(payload: dict | None) -> str:
    """Notebook 04's gap decomposition, when the run has it: the gap's two parts and the findings
    that lose most."""
    if payload is None:
        return ""
    summary = payload["summary"]
    gaps, seeds = summary["gap_points"], len(summary["seeds"])
    worst = ", ".join(f"{finding.replace('_', ' ')} {summary['per_finding'][finding]['gap_synthetic_only']['mean']:.1f}"
                      for finding in payload["worst_findings"][:3])
    return (f" Of that gap ({seeds} classifier seed{'s' * (seeds > 1)}), training on the autoencoder's "
            f"reconstructions costs {gaps['autoencoder_in_training']['mean']:.1f} points and the generator "
            f"{gaps['generator']['mean']:.1f}; the findings it loses most: {worst} (rendering AUC of the synthetic "
            f"images {summary['rendering_auc']['mean']:.3f}).")


def _memorization_sentence(payload: dict | None) -> str:
    """The memorization panel's worst case (notebook 04), when the run has it."""
    if payload is None:
        return ""
    from cxrlib.memorization import MemorizationPanel

    panel = MemorizationPanel.from_json(payload)
    worst = panel.worst_case()
    return (f" Under every attack of the panel, the worst case ({worst.label}) puts {worst.share_closer:.1%} "
            f"(95 % CI {worst.share_closer_ci[0]:.1%}–{worst.share_closer_ci[1]:.1%}) of the accepted synthetic "
            f"images closer to a training image than {panel.quantile:.0%} of real images of unseen patients are "
            f"(expected {panel.expected_share:.0%} without memorization); AUC {worst.auc:.3f} for telling them "
            "apart by that closeness (0.5: as close as new patients).")


def synthesis_figure_block(results: Results) -> str | None:
    figure = Path(results["directory"]) / "figures" / "04_samples_per_finding.png"
    return (f"![synthetic radiographs per finding]({_link(results, 'figures/04_samples_per_finding.png')})"
            if figure.is_file() else None)


