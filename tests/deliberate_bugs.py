"""Deliberate bugs, one at a time: each is put into a copy of the repository, the tests meant to
catch it are run there, and the first failure line is recorded. A bug that no test catches is
a hole in the suite (issue 21: "make at least 12 deliberate bugs ... show the test that fails").

    python tests/deliberate_bugs.py [--only N,M] [--out docs/test_speed/deliberate_bugs]

Writes OUT.md (a table: bug, test, caught, failure line) and OUT.json. The copy is made from
the working tree (`git ls-files`, so uncommitted edits count), in a temporary directory, and
the working tree is never touched. Not collected by pytest (no test_ prefix): it runs the
suite's own tests, a few minutes per bug on 2 cores. The unmutated tests must pass first:
run the suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Bug:
    area: str
    what: str
    path: str
    old: str        # must occur exactly once in `path`
    new: str
    tests: tuple[str, ...]


BUGS = (
    Bug("optimizer", "weight decay on every parameter (biases and BatchNorm scales too)",
        "deep_image/training/state.py", "mask=_kernels_only", "mask=None",
        ("tests/test_update_rule.py::test_weight_decay_leaves_biases_alone",)),
    Bug("optimizer", "nesterov ignored (plain momentum whatever the config says)",
        "deep_image/training/state.py", "nesterov=opt.nesterov", "nesterov=False",
        ("tests/test_update_rule.py::test_update_equals_numpy_reference",)),
    Bug("optimizer", "gradient clipping per element instead of by the global norm",
        "deep_image/training/state.py", "optax.clip_by_global_norm(opt.grad_clip_norm)",
        "optax.clip(opt.grad_clip_norm)",
        ("tests/test_update_rule.py::test_update_equals_numpy_reference",)),
    Bug("schedule", "warm-up one step late (t / w instead of (t + 1) / w)",
        "deep_image/training/state.py",
        "(state.step.astype(jnp.float32) + 1.0) / w", "state.step.astype(jnp.float32) / w",
        ("tests/test_update_rule.py::test_update_equals_numpy_reference",)),
    Bug("schedule", "fixed decays one step late (step > decay step)",
        "deep_image/training/state.py", "jnp.sum(state.step >= jnp.asarray(",
        "jnp.sum(state.step > jnp.asarray(",
        ("tests/test_update_rule.py::test_update_equals_numpy_reference",)),
    Bug("schedule wiring", "the plateau rule reads the reported split, not validation",
        "deep_image/training/loop.py", 'metrics_lib.decision_error(last_eval, "val", headline)',
        'metrics_lib.decision_error(last_eval, "eval", headline)',
        ("tests/test_schedule.py::test_plateau_decisions_follow_the_validation_split_not_the"
         "_reported_one",)),
    Bug("schedule wiring", "decide_after_step ignored (decisions from the first evaluation)",
        "deep_image/training/loop.py", "and step > config.schedule.decide_after_step",
        "and step > 0", ("tests/test_schedule.py::test_no_decision_at_or_before_decide_after_step",)),
    Bug("training step", "the update ignores the schedule (base rate, no warm-up or decay)",
        "deep_image/training/step.py", "lambda p, d: p - lr * d",
        "lambda p, d: p - config.optimizer.learning_rate * d",
        ("tests/test_update_rule.py::test_real_train_step_is_the_numpy_update_of_the_model"
         "_gradient",)),
    Bug("training step", "accumulated micro-batches each take their own mean (k x the gradient)",
        "deep_image/training/step.py", "                return loss.sum() / total, (logits, stats, labels)",
        "                return loss.mean(), (logits, stats, labels)",
        ("tests/test_accumulation_remat_ema.py::test_accumulated_steps_are_the_whole_batch_steps",)),
    Bug("resume", "the input pipeline's position is not restored (the data order restarts)",
        "deep_image/training/checkpoint.py", "        if data_iter is not None:\n            self._mgr.restore(",
        "        if False:\n            self._mgr.restore(",
        ("tests/test_resume.py::test_sigkill_after_checkpoint_resumes_exactly",)),
    Bug("resume", "resume from the checkpoint before the latest",
        "deep_image/training/checkpoint.py",
        "step = self._mgr.latest_step() if step is None else step\n        if step is None:\n"
        "            return None, None",
        "step = (sorted(self._mgr.all_steps())[-2:] or [None])[0] if step is None else step\n"
        "        if step is None:\n            return None, None",
        ("tests/test_resume.py::test_sigkill_after_checkpoint_resumes_exactly",)),
    Bug("resume", "a resume that never happens (the checkpoint is read, its state dropped)",
        "deep_image/training/loop.py", "    if restored is not None:\n        state = restored",
        "    if False:\n        state = restored",
        ("tests/test_resume.py::test_sigkill_after_checkpoint_resumes_exactly",)),
    Bug("readers", "CUB labels kept 1-based (every image one class off)",
        "deep_image/data/official.py",
        '(tables["image_class_labels.txt"][i] for i in ids))) - 1',
        '(tables["image_class_labels.txt"][i] for i in ids)))',
        ("tests/test_archives.py::test_cub_from_its_tgz_or_unpacked_with_boxes",)),
    Bug("readers", "Flowers labels read one image off (image i gets image i+1's label)",
        "deep_image/data/official.py", "labels[ids - 1] - 1", "np.roll(labels, -1)[ids - 1] - 1",
        ("tests/test_archives.py::test_flowers_from_its_tgz_and_mat_files",)),
    Bug("readers", "Pets labels sorted apart from their images",
        "deep_image/data/official.py", "[cls - 1 for _, cls in rows]",
        "sorted(cls - 1 for _, cls in rows)",
        ("tests/test_archives.py::test_pets_from_its_tar_gz_files",)),
    Bug("readers", "FGVC-Aircraft labels one class off (the next variant's index)",
        "deep_image/data/archives.py",
        'records.append((os.path.join(data, "images", f"{name}.jpg"), index[label],',
        'records.append((os.path.join(data, "images", f"{name}.jpg"), '
        '(index[label] + 1) % len(classes),',
        ("tests/test_sources.py::test_fgvc_aircraft_layout_banner_boxes_and_missing_files",)),
    Bug("readers", "MIT Indoor 67 class indices in reverse of the class names",
        "deep_image/data/archives.py", "records.append((os.path.join(images, rel), index[cls]))",
        "records.append((os.path.join(images, rel), len(classes) - 1 - index[cls]))",
        ("tests/test_sources.py::test_mit_indoor67_layout",)),
    Bug("parallel step", "whole leaves' gradients averaged over the devices, not summed",
        "deep_image/parallel/butterfly.py", "return lax.psum(grad, lf.owner_axes)",
        "return lax.pmean(grad, lf.owner_axes)",
        ("tests/test_parallel.py::test_same_loss_and_parameters_as_one_device",)),
    Bug("evaluation", "the flipped view is the unflipped image (flip testing adds nothing)",
        "deep_image/evaluation/dense.py", "one(images[:, :, ::-1])", "one(images)",
        ("tests/test_evaluation.py::test_multiscale_flip_posteriors_equal_a_per_image_reference",)),
    Bug("evaluation", "multi-scale testing scores the first scale only",
        "deep_image/evaluation/evaluator.py", "return sum(probs) / len(probs)",
        "return probs[0]",
        ("tests/test_evaluation.py::test_multiscale_flip_posteriors_equal_a_per_image_reference",)),
    Bug("evaluation", "top-5 counts the top 4",
        "deep_image/evaluation/metrics.py", "min(TOP_K, num_classes)",
        "min(TOP_K - 1, num_classes)",
        ("tests/test_evaluation.py::test_metrics_on_an_unbalanced_set_by_hand",)),
    Bug("evaluation", "padding examples counted (the mask ignored)",
        "deep_image/evaluation/metrics.py", "mask = mask.astype(jnp.float32)",
        "mask = jnp.ones_like(mask, jnp.float32)",
        ("tests/test_evaluation.py::test_padding_rows_count_nothing",)),
    Bug("evaluation", "mean per-class accuracy is the overall accuracy",
        "deep_image/evaluation/metrics.py",
        "np.mean(self.top1[present] / self.count[present])", "self.top1.sum() / n",
        ("tests/test_evaluation.py::test_metrics_on_an_unbalanced_set_by_hand",)),
    Bug("ensemble", "the ensemble keeps each class's largest posterior, not the mean",
        "deep_image/ensemble.py", "total = probs if total is None else total + probs",
        "total = probs if total is None else np.maximum(total, probs)",
        ("tests/test_evaluation.py::test_ensemble_averages_posteriors_not_logits",)),
    Bug("augmentation", "rotation turns the other way (clockwise for a positive angle)",
        "deep_image/data/augment.py", "a = np.deg2rad(rotation)", "a = np.deg2rad(-rotation)",
        ("tests/test_augment.py::test_a_positive_angle_turns_the_image_counter_clockwise",)),
    Bug("augmentation", "barrel and pincushion swapped",
        "deep_image/data/augment.py", '(1 if lens_type == "barrel" else -1)',
        '(-1 if lens_type == "barrel" else 1)',
        ("tests/test_augment.py::test_barrel_pulls_points_towards_the_centre_and_pincushion_pushes"
         "_them_out",)),
    Bug("fine-tuning", "finetune='last' trains every layer",
        "deep_image/training/state.py", '"last": {model.classifier}', '"last": None',
        ("tests/test_finetune.py::test_finetune_modes_train_exactly_their_layers",)),
    Bug("claims analyses", "Holm's factor one too small (m - i - 1)",
        "deep_image/study/stats.py", "(m - i) * p_values[key]", "(m - i - 1) * p_values[key]",
        ("tests/test_study.py::test_holm_by_hand",)),
    Bug("claims analyses", "TOST takes the smaller of its two one-sided p-values",
        "deep_image/study/stats.py", "return float(max(lower, upper))",
        "return float(min(lower, upper))",
        ("tests/test_study.py::test_difference_and_equivalence_p_are_scipys_one_sample_t_tests",)),
    Bug("claims analyses", "a significant effect is 'reproduced' whatever its sign",
        "deep_image/study/stats.py", '"reproduced" if mean > 0 else "refuted"',
        '"reproduced" if mean != 0 else "refuted"', ("tests/test_study.py::test_the_four_verdicts",)),
    Bug("claims analyses", "replicates unpaired (each arm's values sorted before the difference)",
        "deep_image/study/stats.py",
        "    return sum(w * np.asarray(h, np.float64).mean(1) for w, h, _ in terms)",
        "    return sum(w * np.sort(np.asarray(h, np.float64).mean(1)) for w, h, _ in terms)",
        ("tests/test_study.py::test_effects_are_per_replicate_and_need_equal_replicates",
         "tests/test_study.py::test_arms_are_paired_by_replicate",
         "tests/test_study.py::test_bootstrap_collapses_without_spread_and_keeps_the_pairing")),
    Bug("claims analyses", "the health gate passes every pre-trained model",
        "deep_image/study/design.py", 'return record["val/top1"] >= gate', "return True",
        ("tests/test_study.py::test_the_health_gate_replaces_a_failed_model_by_the_next_seed_of"
         "_the_list",)),
    Bug("data order", "every process reads the same rows of each global batch (its offset dropped)",
        "deep_image/data/pipeline.py",
        "lambda i: stream[(i // local_batch) * g + process_index * local_batch + i % local_batch]",
        "lambda i: stream[(i // local_batch) * g + i % local_batch]",
        ("tests/test_pipeline.py::test_each_process_reads_its_own_slice_of_every_epoch",)),
    Bug("data order", "a stream started at a step restarts from the first batch (start_step "
        "ignored)", "deep_image/data/pipeline.py",
        "grain.MapDataset.range(start_step * local_batch, sys.maxsize // g * local_batch)",
        "grain.MapDataset.range(0, sys.maxsize // g * local_batch)",
        ("tests/test_pipeline.py::test_a_stream_started_at_a_step_continues_on_another_process"
         "_count",)),
    Bug("data order", "the shuffle ignores config.seed (every seed sees one data order)",
        "deep_image/data/pipeline.py", ".seed(config.seed).shuffle()", ".seed(0).shuffle()",
        ("tests/test_pipeline.py::test_the_data_order_is_the_seeds",)),
    Bug("device cache", "replicated cache: every device draws the same rows (its block offset "
        "dropped)", "deep_image/data/device_cache.py",
        "        positions = block * rows + offsets      # its rows of the one stream",
        "        positions = offsets                     # its rows of the one stream",
        ("tests/test_device_data.py::test_a_run_with_the_device_cache_resumes_on_another_device"
         "_count",)),
    Bug("device cache", "the cache's augmentations are drawn alike at every step (step not in "
        "the key)", "deep_image/data/device_cache.py",
        "device_augment.example_key(aug, step, r)", "device_augment.example_key(aug, 0, r)",
        ("tests/test_device_data.py::test_each_step_draws_new_augmentations_for_its_rows",)),
    Bug("parallel step", "lazy_gather takes a flat block's last elements (the padding at the "
        "front)", "deep_image/parallel/butterfly.py",
        "return whole[0, :lf.local_size].reshape(lf.local_shape)",
        "return whole[0, lf.owners * lf.part - lf.local_size:].reshape(lf.local_shape)",
        ("tests/test_parallel.py::test_same_loss_and_parameters_as_one_device",)),
    Bug("preemption", "the first Ctrl-C aborts without saving (the count starts at one)",
        "deep_image/training/preemption.py", "if self._ctrl_c > 1:", "if self._ctrl_c > 0:",
        ("tests/test_resume.py::test_a_stop_notice_saves_and_resume_is_exact",)),
    Bug("checkpoint", "a checkpoint of another mesh is restored without converting its layout",
        "deep_image/training/checkpoint.py",
        "if layout is not None and saved is not None and saved != layout.describe():",
        "if layout is not None and saved is None:",
        ("tests/test_device_data.py::test_a_run_with_the_device_cache_resumes_on_another_device"
         "_count",
         "tests/test_parallel_training.py::test_resume_on_another_mesh_continues_the_run")),
    Bug("fine-tuning", "classes compared as sets (a reordered class list keeps the classifier)",
        "deep_image/training/finetune.py",
        "or list(pretrained_classes) == list(class_names))",
        "or sorted(pretrained_classes) == sorted(class_names))",
        ("tests/test_finetune.py::test_the_same_classes_in_another_order_reinitialize_the"
         "_classifier",)),
    Bug("validation holdout", "the rest of a class overlaps its holdout by one example",
        "deep_image/data/splits.py", "keep.append(order[:k] if split.head else order[k:])",
        "keep.append(order[:k] if split.head else order[max(k - 1, 0):])",
        ("tests/test_protocol.py::test_holdout_is_disjoint_stratified_and_fixed",)),
    Bug("SynthBirds", "class names enumerate the head marking fastest (name i is not label i)",
        "deep_image/data/synthetic.py",
        "    combos = itertools.product(*[values for _, values in reversed(attributes[:k])])\n"
        "    return [\" \".join(reversed(c)) + f\" {bird}\" for c in combos]",
        "    combos = itertools.product(*[values for _, values in attributes[:k]])\n"
        "    return [\" \".join(c) + f\" {bird}\" for c in combos]",
        ("tests/test_synthetic.py::test_class_name_i_names_the_markings_of_label_i",)),
    Bug("augmentation", "colour cast shifts applied to the channels in reverse (BGR order)",
        "deep_image/data/augment.py", "image = cv2.add(image, (*map(float, p.color_cast), 0.0))",
        "image = cv2.add(image, (*map(float, p.color_cast[::-1]), 0.0))",
        ("tests/test_augment.py::test_colour_cast_adds_its_shift_to_each_channel_and_clips",)),
    Bug("models", "dropout without the 1 / keep scaling (training activations shrink)",
        "deep_image/models/vgg.py", "return jax.lax.select(mask, x / keep, jnp.zeros_like(x))",
        "return jax.lax.select(mask, x, jnp.zeros_like(x))",
        ("tests/test_models.py::test_dropout_zeroes_a_share_of_rate_and_scales_the_rest_by_one"
         "_over_keep",)),
    Bug("schedule", "the plateau rule's cooldown ignored", "deep_image/training/state.py",
        "cooldown=schedule.cooldown", "cooldown=0",
        ("tests/test_protocol.py::test_schedule_matches_a_hand_written_reduce_on_plateau",)),
    Bug("evaluation", "the box crop transposed (x and y swapped)",
        "deep_image/data/transforms.py", "return image[y0:y1, x0:x1]",
        "return image[x0:x1, y0:y1]",
        ("tests/test_evaluation.py::test_bbox_protocol_crops_each_test_image_to_its_box",)),
    Bug("predict", "predict prints the least likely classes", "deep_image/predict.py",
        "best = np.argsort(-p)[:k]", "best = np.argsort(p)[:k]",
        ("tests/test_evaluation.py::test_predict_reports_bad_files_and_predicts_the_rest",)),
    Bug("seeds summary", "a resumed run's repeated final evaluation: the first record is used, "
        "not the last", "deep_image/study/seeds.py",
        'if "eval/top1" in record and (last is None or record["step"] >= last["step"]):',
        'if "eval/top1" in record and (last is None or record["step"] > last["step"]):',
        ("tests/test_seeds.py::test_a_repeated_final_evaluation_counts_its_last_record",)),
    Bug("claims runs", "a fine-tune's config starts from its own workdir, not its pre-trained "
        "model's", "deep_image/study/runs.py", "c.init_from = run_dir(work, self.init)",
        "c.init_from = run_dir(work, self.name)",
        ("tests/test_study.py::test_a_fine_tune_starts_from_its_pre_trained_models_workdir",)),
    Bug("claims runs", "every pre-trained model whose checkpoint is gone is retrained, also "
        "when all its fine-tunes are recorded", "deep_image/reproduce.py",
        "needed = {r.init for r in missing if r.init}", "needed = {r.init for r in runs if r.init}",
        ("tests/test_study.py::test_a_fresh_checkout_retrains_a_pre_trained_model_only_for"
         "_missing_fine_tunes",)),
    Bug("config check", "a capture size below 8 pixels accepted", "deep_image/config.py",
        "need(d.capture_size == 0 or d.capture_size >= 8,", "need(d.capture_size >= 0,",
        ("tests/test_protocol.py::test_a_capture_size_below_8_pixels_is_refused",)),
    Bug("layout", "a leaf of exactly whole_below elements kept whole (<= for <)",
        "deep_image/parallel/layout.py", "math.prod(shape) // splits < whole_below)",
        "math.prod(shape) // splits <= whole_below)",
        ("tests/test_parallel.py::test_leaves_of_fewer_than_whole_below_elements_are_kept"
         "_whole",)),
    Bug("SLURM devices", "a task that sees all of the node's GPUs counts as bound to them "
        "(every task opens every GPU)", "deep_image/parallel/distributed.py",
        "if on_node and count < on_node:", "if on_node and count <= on_node:",
        ("tests/test_gpu_launch.py::test_every_task_opens_its_own_gpus_of_the_job",)),
    Bug("augmentation", "crop offsets drawn from {0..S-C} (one past Table 1's range)",
        "deep_image/data/augment.py",
        "offset = (int(rng.integers(max(1, h - crop))), int(rng.integers(max(1, w - crop))))",
        "offset = (int(rng.integers(max(1, h - crop + 1))), "
        "int(rng.integers(max(1, w - crop + 1))))",
        ("tests/test_augment.py::test_draws_stay_in_their_spaces_and_are_deterministic",)),
    Bug("augmentation", "horizontal stretch squeezes (source x multiplied, not divided)",
        "deep_image/data/augment.py", "sx, sy = x / (1 + LENS_MAX_STRETCH * t), y",
        "sx, sy = x * (1 + LENS_MAX_STRETCH * t), y",
        ("tests/test_augment.py::test_stretches_scale_one_axis_only",)),
    Bug("resize", "shorter_side swaps the output's width and height",
        "deep_image/data/transforms.py",
        "size = (max(scale, round(w * f)), max(scale, round(h * f)))",
        "size = (max(scale, round(h * f)), max(scale, round(w * f)))",
        ("tests/test_pipeline.py::test_shorter_side_resize_keeps_the_aspect_ratio",)),
    Bug("decode", "16-bit images truncated to their low byte (not shifted by 8)",
        "deep_image/data/decode.py", "image = (image >> 8).astype(np.uint8)",
        "image = image.astype(np.uint8)",
        ("tests/test_sources.py::test_16_bit_images_keep_their_high_byte_in_rgb_order",)),
    Bug("decode", "transparent pixels composited over black, not white",
        "deep_image/data/decode.py", "* alpha + 255.0 * (1.0 - alpha)",
        "* alpha + 0.0 * (1.0 - alpha)",
        ("tests/test_sources.py::test_bad_images_decode_or_are_skipped_and_counted",)),
    Bug("weight import", "torchvision conv kernels transposed in H and W (OIHW -> WHIO)",
        "deep_image/tools/import_weights.py",
        'params[name] = {"kernel": np.ascontiguousarray(np.asarray(w).transpose(2, 3, 1, 0)),',
        'params[name] = {"kernel": np.ascontiguousarray(np.asarray(w).transpose(3, 2, 1, 0)),',
        ("tests/test_import_weights.py::test_imported_logits_match_pytorch",)),
    Bug("metrics writer", "images/s counts every step since 0, not since the last report",
        "deep_image/training/metrics_writer.py", "return (step - s0) * self._batch",
        "return step * self._batch",
        ("tests/test_training.py::test_train_rate_is_the_images_since_the_previous_report_over"
         "_its_seconds",)),
    Bug("metrics writer", "on resume the restored step's own records are dropped too",
        "deep_image/training/metrics_writer.py", 'if json.loads(line).get("step", 0) <= step:',
        'if json.loads(line).get("step", 0) < step:',
        ("tests/test_resume.py::test_sigkill_after_checkpoint_resumes_exactly",)),
    Bug("memory plan", "donated (aliased) bytes added to the peak, not subtracted",
        "deep_image/training/memory.py", 'out["output_bytes"] - out["alias_bytes"]',
        'out["output_bytes"] + out["alias_bytes"]',
        ("tests/test_accumulation_remat_ema.py::test_the_compiled_peak_counts_a_donated"
         "_argument_once",)),
    Bug("xla flags", "a user's --flag=value not seen as naming the flag (the default added "
        "next to it)", "deep_image/xla_flags.py",
        'named = {f.split("=", 1)[0] for f in flags.split()}', "named = set(flags.split())",
        ("tests/test_xla_flags.py::test_defaults_are_added_only_where_the_user_set_nothing",)),
)


def copy_tree(dest: str) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split("\n")
    for f in filter(None, files):
        src = os.path.join(REPO, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, f))


def failure_line(output: str) -> str:
    """What pytest printed for the first failure: its first 'E' lines, joined (empty when
    nothing failed)."""
    lines = output.splitlines()
    first = next((i for i, l in enumerate(lines) if l.startswith("E ")), None)
    if first is None:
        return ""
    block = []
    for l in lines[first:]:
        if not l.startswith("E"):
            break
        block.append(l[1:].strip())
    return re.sub(r"\s+", " ", " ".join(block)).strip()[:200]


def run_bug(copy: str, bug: Bug) -> dict:
    path = os.path.join(copy, bug.path)
    original = open(path).read()
    if original.count(bug.old) != 1:
        raise SystemExit(f"error: bug {bug.what!r}: its text occurs {original.count(bug.old)} "
                         f"times in {bug.path}, not once: update tests/deliberate_bugs.py")
    with open(path, "w") as f:
        f.write(original.replace(bug.old, bug.new))
    t0 = time.time()
    try:
        env = {**os.environ, "PYTHONPATH": copy, "PYTEST_ADDOPTS": ""}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-n", "0",
                               "-p", "no:cacheprovider", *bug.tests],
                              cwd=copy, env=env, capture_output=True, text=True)
    finally:
        with open(path, "w") as f:
            f.write(original)
    out = proc.stdout + proc.stderr
    failed = re.search(r"^FAILED (.+?)(?: - .*)?$", out, re.M)   # ids may hold spaces
    return {**dataclasses.asdict(bug), "caught": proc.returncode == 1 and failed is not None,
            "returncode": proc.returncode, "failing_test": failed[1] if failed else None,
            "failure_line": failure_line(out), "seconds": round(time.time() - t0, 1)}


def write(results: list[dict], out: str) -> None:
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    caught = sum(r["caught"] for r in results)
    lines = [f"# Deliberate bugs: {caught} of {len(results)} caught",
             "", "Made by `python tests/deliberate_bugs.py` (one bug at a time, in a copy of "
             "the repository; tests/deliberate_bugs.py lists each bug's exact edit).", "",
             "| # | area | bug | failing test | failure line |", "|---|---|---|---|---|"]
    for r in results:
        test = (r["failing_test"] or "NOT CAUGHT: " + ", ".join(r["tests"])).replace("|", "\\|")
        line = r["failure_line"].replace("|", "\\|")
        lines.append(f"| {r['index']} | {r['area']} | {r['what']} | `{test}` | `{line}` |")
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated bug numbers (1-based)")
    p.add_argument("--out", default=os.path.join(REPO, "docs/test_speed/deliberate_bugs"))
    args = p.parse_args()
    chosen = ([int(i) for i in args.only.split(",")] if args.only
              else list(range(1, len(BUGS) + 1)))
    results = []
    with tempfile.TemporaryDirectory(prefix="deliberate_bugs_") as copy:
        copy_tree(copy)
        for i in chosen:
            r = {"index": i, **run_bug(copy, BUGS[i - 1])}
            results.append(r)
            print(f"{i:2d} {'caught' if r['caught'] else 'NOT CAUGHT':10s} {r['seconds']:6.0f} s"
                  f"  {r['what']}\n   {r['failing_test']}: {r['failure_line']}", flush=True)
            write(results, args.out)
    missed = [r["index"] for r in results if not r["caught"]]
    print(f"{len(results) - len(missed)} of {len(results)} caught"
          + (f"; not caught: {missed}" if missed else ""))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
