"""Scoring: the model and the "source unchanged" baseline per task, raw and on the foreground,
and the table that prints them."""
from __future__ import annotations

import torch

from megaportraits_export import metrics
from megaportraits_export.evaluation.pairs import PairSet, heldout_pairs

TASKS = ("self", "cross")


def evaluate(reenactor, pairs: PairSet, motion: str = "relative") -> dict:
    """Metrics of the model and of the "source unchanged" baseline, per task."""
    def scores(prediction: torch.Tensor) -> tuple:
        raw, masked = metrics.MetricAccumulator(), metrics.MetricAccumulator()
        raw.add(prediction, pairs.target)
        masked.add(prediction * pairs.target_mask, pairs.target * pairs.target_mask)
        return raw.means(), masked.means()

    results = {"model": {}, "source_unchanged": {}, "masked": {"model": {}, "source_unchanged": {}}}
    baseline = scores(pairs.source)
    for task in TASKS:
        driver = pairs.self_driver if task == "self" else pairs.cross_driver
        reference = None
        if motion == "relative":
            reference = pairs.source if task == "self" else pairs.cross_reference
        model = scores(reenactor.reenact(pairs.source, driver, reference))
        for row, (raw, masked) in (("model", model), ("source_unchanged", baseline)):
            results[row][task] = raw
            results["masked"][row][task] = masked
    return results


def format_table(results: dict, header: str) -> str:
    names = [("l1", "L1", "{:.4f}"), ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}")]
    lines = [header,
             f"{'':27}" + "".join(f"{t + '-reenactment':^27}" for t in TASKS),
             f"{'':27}" + "".join(f"{label:>9}" for _ in TASKS for _, label, _ in names)]
    for scope, table in (("raw", results), ("masked", results.get("masked"))):
        if table is None:
            continue
        for row, label in (("model", "model"), ("source_unchanged", "source unchanged")):
            cells = "".join(f"{fmt.format(table[row][t][key]):>9}" for t in TASKS for key, _, fmt in names)
            lines.append(f"{label + ' (' + scope + ')':27}{cells}")
    lines.append("L1 lower is better; PSNR (dB) and SSIM higher are better; masked: the target's person "
                 "only (both images times its mask). " + metrics.LPIPS_UNAVAILABLE + ".")
    return "\n".join(lines)


def run_evaluation(reenactor, pairs: int, seed: int, identities: int, motion: str, background: str = "source") -> dict:
    pair_set = heldout_pairs(pairs, reenactor.image_size, seed=seed, identities=identities)
    results = evaluate(reenactor, pair_set, motion=motion)
    if hasattr(reenactor, "pose_errors"):
        results["head_pose_error"] = reenactor.pose_errors(pair_set)
    results["protocol"] = {
        "data": "synthetic held-out identities (seeds >= EVAL_IDENTITY_SEED_OFFSET)",
        "pairs": pairs, "heldout_identities": identities, "seed": seed, "motion": motion,
        "image_size": reenactor.image_size, "lpips": None, "background": background,
        "masked": "prediction and target times the target's person mask",
    }
    return results
