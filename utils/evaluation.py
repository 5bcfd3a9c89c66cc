"""Evaluating a pixel-space diffusion model: N samples, the non-sensitive rate, FID, one result JSON.

evaluate.py (any checkpoint main.py or main-ft.py wrote) and the end of a training run
(utils.experiment) both call `evaluate_and_save`: it draws N samples with the run's sampler and
seed, judges them with the config's cached sensitivity classifier (utils.classifier), measures FID
and the classifier-feature Frechet distance against the normal-only test set (utils.metrics), and
writes `{output_dir}/outputs/results/{key}.json` in the schema report.py reads:

    {key, script, run_key, checkpoint, config_name, dataset, algorithm, beta, seed, pu_correction,
     key_tags, n_u_normal, n_u_sensitive, n_s, sampler, num_inference_steps, num_samples,
     metrics: {non_sensitive_rate, classifier_accuracy, fid, fd_classifier, class_accuracy, fd_classes,
              precision, recall, sensitive_share, share_0, share_1, ...},
     fid_error, classifier: {...}, class_classifier: {...}, n_reference, device, sampling_dtype,
     times: {classifier_s, sampling_s, metrics_s, total_s, train_s}, versions: {...}}

`fid` is null where the Inception weights cannot be had, and `fid_error` says why; `fd_classifier`
(always available offline) stands in for it, comparable only between runs of the same config.
The class classifier (utils.classifier, task CLASSES) gives the offline quality measures, in its
penultimate features against the same normal-only test set: `fd_classes`, `precision` and `recall`
(k = 3), and each class's share of the samples (`share_{class id}`; `sensitive_share` sums the
sensitive classes'), so a model that drops a normal class or draws noise shows it.
"""
import json
import platform
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from configs import Config
from utils.classifier import CLASSES, PREDICT_BATCH, check_classifier_weights, classifier_loader, \
    features_and_predictions, load_or_train_classifier, num_outputs, predict_normal
from utils.data import normal_test_set
from utils.errors import UsageError, first_line
from utils.files import PIPELINE_INDEX, RESULTS_DIR, RUN_CONFIG_FILE, write_json_atomically
from utils.metrics import ClassifierFeatures, batches, class_quality, frechet_distances, frechet_metric, \
    inception_metric_or_reason, non_sensitive_rate
from utils.run import Run
from utils.sampling import generate, resolve_eval_batch_size

EVALUABLE_SCRIPTS = ("main", "main_ft")      # pixel-space checkpoints; main_sd has evaluate-sd.py


def check_eval_args(classifier_weights=None, inception_weights=None):
    """Validate the evaluation's file arguments before anything is written."""
    check_classifier_weights(classifier_weights)
    if inception_weights and not Path(inception_weights).is_file():
        raise UsageError(f"--inception_weights {inception_weights} is not a file; pass torch-fidelity's "
                         f"weights-inception-2015-12-05-6726825d.pth or leave it out")


def evaluate(unet, noise_scheduler, *, config_name, config, seed, num_samples, num_inference_steps, batch_size,
             data_dir, output_dir, device, dtype=None, reference=None, classifier_weights=None,
             inception_weights=None):
    """Sample `num_samples` images with config.sampler and measure them; returns the result fields.

    `batch_size` (a number or "auto") batches the sampling; the classifier and the Frechet features
    take PREDICT_BATCH images at a time. `reference` is the normal-only test set (loaded from
    `data_dir` when None); the classifier is loaded from or cached into output_dir/checkpoints/classifiers/.
    """
    device = torch.device(device)
    times, start = {}, time.time()
    classifier, meta = load_or_train_classifier(config_name, config, data_dir, output_dir, device, classifier_weights)
    judge, judge_meta = load_or_train_classifier(config_name, config, data_dir, output_dir, device, classifier_weights,
                                                 task=CLASSES)
    reference = reference if reference is not None else normal_test_set(config, data_dir)
    times["classifier_s"] = round(time.time() - start, 1)

    start = time.time()
    batch_size = resolve_eval_batch_size(batch_size, unet, num_samples=num_samples, dtype=dtype)
    images = generate(unet, noise_scheduler, sampler=config.sampler, num_inference_steps=num_inference_steps,
                      num_samples=num_samples, batch_size=batch_size, seed=seed, device=device, dtype=dtype,
                      desc=f"evaluation samples ({num_samples})")
    times["sampling_s"] = round(time.time() - start, 1)

    start = time.time()
    rate = non_sensitive_rate(predict_normal(classifier, images, device, PREDICT_BATCH))
    inception, fid_error = inception_metric_or_reason(inception_weights)
    metrics = dict(fd_classifier=frechet_metric(ClassifierFeatures(classifier)))
    if inception is not None:
        metrics["fid"] = inception
    reference_batches = (x for x, _ in classifier_loader(reference, PREDICT_BATCH, device))
    distances = frechet_distances(images, reference_batches, metrics, device, PREDICT_BATCH)
    generated, predicted = features_and_predictions(judge, batches(images, PREDICT_BATCH), device)
    reference_features, _ = features_and_predictions(
        judge, (x for x, _ in classifier_loader(reference, PREDICT_BATCH, device)), device)
    quality = class_quality(generated, reference_features, predicted, config.normal_classes,
                            num_outputs(config, CLASSES))
    times["metrics_s"] = round(time.time() - start, 1)
    if fid_error:
        print(f"note: FID not computed ({fid_error}); fd_classifier stands in for it")
    return dict(metrics=dict(non_sensitive_rate=rate, classifier_accuracy=meta["test_accuracy"],
                             fid=distances.get("fid"), fd_classifier=distances["fd_classifier"],
                             class_accuracy=judge_meta["test_accuracy"], **quality),
                fid_error=fid_error, n_reference=len(reference), eval_batch_size=batch_size, classifier=meta,
                class_classifier=judge_meta, times=times)


def package_versions():
    import diffusers
    import torch_fidelity
    import torchmetrics
    import torchvision
    return dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                diffusers=diffusers.__version__, torchmetrics=torchmetrics.__version__,
                torch_fidelity=torch_fidelity.__version__, numpy=np.__version__)


def evaluate_and_save(run, unet, noise_scheduler, *, num_samples, batch_size, data_dir, device, dtype=None,
                      num_inference_steps=None, sampler=None, reference=None, classifier_weights=None,
                      inception_weights=None, output_dir=None, checkpoint=None):
    """`evaluate` the model of `run` (a utils.run.Run) and write {output_dir}/outputs/results/{key}.json.

    `num_inference_steps` and `sampler` default to the run's; others tag the key (Run.result_key).
    `output_dir` defaults to the run's root, `checkpoint` (recorded) to its checkpoint folder.
    Returns (path, result).
    """
    started = time.time()
    config = replace(run.config, sampler=sampler or run.config.sampler)
    steps = num_inference_steps or config.num_inference_steps
    evaluation = evaluate(unet, noise_scheduler, config_name=run.config_name, config=config, seed=run.seed,
                          num_samples=num_samples, num_inference_steps=steps, batch_size=batch_size,
                          data_dir=data_dir, output_dir=output_dir or run.root, device=device, dtype=dtype,
                          reference=reference, classifier_weights=classifier_weights,
                          inception_weights=inception_weights)
    evaluation["times"].update(total_s=round(time.time() - started, 1), train_s=run.elapsed())
    key = run.result_key(steps, config.sampler)
    result = dict(key=key, script=run.script, run_key=run.key, checkpoint=str(checkpoint or run.checkpoint_dir),
                  config_name=run.config_name, dataset=config.dataset, algorithm=run.algorithm,
                  beta=run.beta, beta_estimate=run.beta_estimate, seed=run.seed, pu_correction=run.pu_correction,
                  key_tags=list(run.tags),
                  n_u_normal=config.n_u_normal, n_u_sensitive=config.n_u_sensitive, n_s=config.n_s,
                  sampler=config.sampler, num_inference_steps=steps, num_samples=num_samples,
                  device=str(device), sampling_dtype=str(dtype).replace("torch.", "") if dtype else "float32",
                  **evaluation, versions=package_versions())
    path = write_json_atomically(Path(output_dir or run.root) / RESULTS_DIR / f"{key}.json", result)
    m = result["metrics"]
    fid = f"FID {m['fid']:.2f}" if m["fid"] is not None else "FID n/a"
    print(f"{key}: non-sensitive rate {m['non_sensitive_rate']:.4f} (classifier accuracy "
          f"{m['classifier_accuracy']:.4f}), {fid}, fd_classifier {m['fd_classifier']:.3f}; class classifier: "
          f"fd_classes {m['fd_classes']:.3f}, precision {fmt(m['precision'])}, recall {fmt(m['recall'])}, "
          f"sensitive share {m['sensitive_share']:.3f}; on {num_samples} samples; saved {path}")
    return path, result


def fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def config_from_record(record):
    """The Config a run recorded (JSON turned its tuples into lists; fields added since keep their defaults)."""
    known = {f.name for f in fields(Config)}
    values = {k: v for k, v in record["config"].items() if k in known}
    values["normal_classes"] = tuple(values["normal_classes"])
    values["unet"] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.get("unet", {}).items()}
    return Config(**values)


def read_checkpoint_run(checkpoint, root):
    """(Run, run record) of a checkpoint folder main.py or main-ft.py wrote, the Run's outputs going
    under `root`; a UsageError otherwise."""
    checkpoint = Path(checkpoint)
    record_file = checkpoint / RUN_CONFIG_FILE
    if not checkpoint.is_dir() or not record_file.is_file() or not (checkpoint / PIPELINE_INDEX).is_file():
        raise UsageError(f"{checkpoint} is not a checkpoint folder (it needs {RUN_CONFIG_FILE} and {PIPELINE_INDEX}); "
                         f"pass a checkpoints/main_* folder that main.py or main-ft.py wrote")
    try:
        record = json.loads(record_file.read_text())
        script = record.get("script")
        if script not in EVALUABLE_SCRIPTS:
            raise UsageError(f"{checkpoint} was written by {script}; evaluate.py evaluates main.py and main-ft.py "
                             f"checkpoints (use evaluate-sd.py for main-sd.py)")
        return Run.from_record(record, config_from_record(record), root), record
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as e:
        raise UsageError(f"{record_file} is unreadable or incomplete ({type(e).__name__}: {e}); "
                         f"re-run the training that wrote it")


def load_checkpoint_model(checkpoint, device):
    """(unet, noise scheduler) from a saved diffusers pipeline folder."""
    from diffusers import DiffusionPipeline
    try:
        pipeline = DiffusionPipeline.from_pretrained(checkpoint)
    except (OSError, ValueError) as e:   # a part missing or its weights cut short
        raise UsageError(f"cannot load the pipeline in {checkpoint} ({first_line(e)}); the checkpoint is damaged, "
                         f"re-run the training that wrote it")
    return pipeline.unet.to(device).eval(), pipeline.scheduler
