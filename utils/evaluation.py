"""Evaluating a pixel-space diffusion model: N samples, the non-sensitive rate, FID, one result JSON.

evaluate.py (any checkpoint main.py or main-ft.py wrote) and the end of a training run
(utils.experiment) both call `evaluate_and_save`: it draws N samples with the run's sampler and
seed, judges them with the config's cached sensitivity classifier (utils.classifier), measures FID
and the classifier-feature Frechet distance against the normal-only test set (utils.metrics), and
writes `{output_dir}/outputs/results/{key}.json` in the schema report.py reads:

    {key, script, run_key, checkpoint, config_name, dataset, [train_data_dir,] algorithm, beta, seed,
     pu_correction, key_tags, n_u_normal, n_u_sensitive, n_s, sampler, num_inference_steps, num_samples,
     metrics: {non_sensitive_rate, classifier_accuracy, fid, fd_classifier, class_accuracy, fd_classes,
              precision, recall, sensitive_share, share_0, share_1, ...},
     fid_error, unavailable: {metric: why it is null}, classifier: {...}, class_classifier: {...},
     n_reference, device, sampling_dtype, times: {classifier_s, sampling_s, metrics_s, total_s, train_s},
     versions: {...}}

`fid` is null where the Inception weights cannot be had, and `fid_error` says why; `fd_classifier`
(always available offline) stands in for it, comparable only between runs of the same config.
The class classifier (utils.classifier, task CLASSES) gives the offline quality measures, in its
penultimate features against the same normal-only test set: `fd_classes`, `precision` and `recall`
(k = 3), and each class's share of the samples (`share_{class id}`; `sensitive_share` sums the
sensitive classes'), so a model that drops a normal class or draws noise shows it.

On an image folder (config.train_data_dir, utils/folders.py) the sensitivity judge trains on
test/normal against test/sensitive, and FID and fd_classifier measure against test/normal; what the
folder cannot back is null: the rate without labeled test images, the class classifier's measures
always (folders have no class labels). `unavailable` maps every null metric to the reason. A pipeline
this project did not train (utils.pipelines) is evaluated the same way against a config's data or a folder.
"""
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from configs import Config
from utils.classifier import CLASSES, PREDICT_BATCH, check_classifier_weights, classifier_loader, \
    features_and_predictions, load_or_train_classifier, num_outputs, predict_normal
from utils.data import normal_test_set
from utils.errors import UsageError, first_line
from utils.files import RESULTS_DIR, write_json_atomically
from utils.metrics import ClassifierFeatures, batches, class_quality, frechet_distances, frechet_metric, \
    inception_metric_or_reason, non_sensitive_rate
from utils.records import config_from_record, pixel_result_record, read_run_record, unreadable
from utils.run import Run
from utils.sampling import AUTO, Sampling, check_samples_folder, generate, resolve_eval_batch_size, save_samples

# Why a folder's judges are missing (utils.folders), as the results and the run's notes give it.
NO_CLASS_LABELS = "the class classifier's measures need class labels, which image folders do not have"
CLASS_METRICS = ("class_accuracy", "fd_classes", "precision", "recall", "sensitive_share")

EVALUABLE_SCRIPTS = ("main", "main_ft")      # pixel-space checkpoints; main_sd has evaluate-sd.py


@dataclass(frozen=True)
class EvalOptions:
    """How an evaluation samples and judges; None everywhere means the run's own setting."""

    num_samples: int = None          # None: the config's num_eval_samples; 0 skips the evaluation
    batch_size: object = AUTO        # images per sampling batch, or AUTO (utils.sampling)
    sampler: str = None              # another sampler or step count tags the result key
    num_inference_steps: int = None
    data_dir: str = None             # the data root of the test set and the judges' training data
    classifier_weights: str = None   # local ImageNet ResNet-18 weights for the judges
    inception_weights: str = None    # local torch-fidelity Inception weights for FID
    save_samples: str = None         # a folder that receives every evaluated sample as 000000.png, ...

    def samples_for(self, config):
        return config.num_eval_samples if self.num_samples is None else self.num_samples


@dataclass
class Judges:
    """The judges of one config's samples: the sensitivity classifier, the class classifier (each
    with its training record) and the normal-only test set they are compared against. On an image
    folder any of them may be None, and `missing` says why ({"classifier" | "class_classifier" |
    "reference": reason})."""

    config: Config
    classifier: torch.nn.Module
    meta: dict
    class_classifier: torch.nn.Module
    class_meta: dict
    reference: object
    missing: dict = field(default_factory=dict)


def check_eval_args(classifier_weights=None, inception_weights=None, save_samples=None):
    """Validate the evaluation's file and folder arguments before anything is written."""
    check_classifier_weights(classifier_weights)
    if inception_weights and not Path(inception_weights).is_file():
        raise UsageError(f"--inception_weights {inception_weights} is not a file; pass torch-fidelity's "
                         f"weights-inception-2015-12-05-6726825d.pth or leave it out")
    if save_samples:
        check_samples_folder(save_samples)


def load_judges(config_name, config, data_dir, output_dir, device, classifier_weights=None, reference=None):
    """The Judges of `config`: classifiers loaded from, or trained and cached into,
    output_dir/checkpoints/classifiers/; `reference` (the normal-only test set) loaded from `data_dir`
    when None. An image folder's config gets the folder's judges (`load_folder_judges`)."""
    if config.train_data_dir:
        return load_folder_judges(config_name, config, output_dir, device, classifier_weights)
    classifier, meta = load_or_train_classifier(config_name, config, data_dir, output_dir, device, classifier_weights)
    judge, judge_meta = load_or_train_classifier(config_name, config, data_dir, output_dir, device, classifier_weights,
                                                 task=CLASSES)
    reference = reference if reference is not None else normal_test_set(config, data_dir)
    return Judges(config, classifier, meta, judge, judge_meta, reference)


def load_folder_judges(config_name, config, output_dir, device, classifier_weights=None):
    """The Judges of an image folder's config: the sensitivity judge trained on test/normal against
    test/sensitive (the config's classifier recipe; cached under the folder's name) where both exist,
    test/normal as the reference where it exists, no class classifier."""
    from utils.folders import folder_judge_data, load_test_sets, rate_needs_labels, reference_needs_images, \
        scan_folder
    folder = scan_folder(config.train_data_dir)
    test, test_sensitive = load_test_sets(config, folder)
    missing = dict(class_classifier=NO_CLASS_LABELS)
    classifier = meta = None
    if folder.has_judge:
        classifier, meta = load_or_train_classifier(config_name, config, None, output_dir, device, classifier_weights,
                                                    data=folder_judge_data(config, folder, test, test_sensitive))
    else:
        missing["classifier"] = rate_needs_labels(folder.root)
    if test is None:
        missing["reference"] = reference_needs_images(folder.root)
    return Judges(config, classifier, meta, None, None, test, missing)


def judge_samples(images, judges, device, inception_weights=None):
    """The measures of `images` ([N, C, H, W] in [0, 1]): the non-sensitive rate, the Frechet
    distances (FID where Inception can be had) and the class classifier's quality measures.
    Returns (metrics, unavailable): every metric the judges cannot back is None, and `unavailable`
    maps it to the reason."""
    classifier, judge, reference = judges.classifier, judges.class_classifier, judges.reference
    unavailable = {}
    if classifier is not None:
        rate = non_sensitive_rate(predict_normal(classifier, images, device, PREDICT_BATCH))
    else:
        rate = None
        unavailable.update(dict.fromkeys(("non_sensitive_rate", "classifier_accuracy"), judges.missing["classifier"]))
    metrics, distances = {}, {}
    if reference is not None:
        inception, fid_error = inception_metric_or_reason(inception_weights)
        if classifier is not None:
            metrics["fd_classifier"] = frechet_metric(ClassifierFeatures(classifier))
        if inception is not None:
            metrics["fid"] = inception
        else:
            unavailable["fid"] = fid_error
        reference_batches = (x for x, _ in classifier_loader(reference, PREDICT_BATCH, device))
        distances = frechet_distances(images, reference_batches, metrics, device, PREDICT_BATCH) if metrics else {}
    else:
        unavailable["fid"] = judges.missing["reference"]
    if "fd_classifier" not in distances:
        unavailable["fd_classifier"] = unavailable.get("non_sensitive_rate") or judges.missing.get("reference")
    if judge is not None and reference is not None:
        generated, predicted = features_and_predictions(judge, batches(images, PREDICT_BATCH), device)
        reference_features, _ = features_and_predictions(
            judge, (x for x, _ in classifier_loader(reference, PREDICT_BATCH, device)), device)
        quality = class_quality(generated, reference_features, predicted, judges.config.normal_classes,
                                num_outputs(judges.config, CLASSES))
        quality = dict(class_accuracy=judges.class_meta["test_accuracy"], **quality)
    else:
        quality = dict.fromkeys(CLASS_METRICS)
        unavailable.update(dict.fromkeys(CLASS_METRICS, judges.missing.get("class_classifier")
                                         or judges.missing.get("reference")))
    return dict(non_sensitive_rate=rate, classifier_accuracy=judges.meta["test_accuracy"] if judges.meta else None,
                fid=distances.get("fid"), fd_classifier=distances.get("fd_classifier"), **quality), unavailable


def evaluate(unet, noise_scheduler, sampling, judges, *, dtype=None, inception_weights=None, save_samples_to=None):
    """Draw images as `sampling` (a utils.sampling.Sampling) says and measure them with `judges`;
    returns the result fields. An AUTO batch size is resolved first (and recorded). `save_samples_to`
    (a folder) receives every sample as a numbered PNG before they are judged."""
    device = next(unet.parameters()).device
    start = time.time()
    batch_size = resolve_eval_batch_size(sampling.batch_size, unet, num_samples=sampling.num_samples, dtype=dtype)
    images = generate(unet, noise_scheduler, replace(sampling, batch_size=batch_size), dtype=dtype,
                      desc=f"evaluation samples ({sampling.num_samples})")
    times = dict(sampling_s=round(time.time() - start, 1))
    if save_samples_to:
        print(f"saved {len(images)} samples to {save_samples(images, save_samples_to)}")
    start = time.time()
    metrics, unavailable = judge_samples(images, judges, device, inception_weights)
    times["metrics_s"] = round(time.time() - start, 1)
    fid_error = unavailable.get("fid")
    if fid_error and judges.reference is not None:
        stand_in = "; fd_classifier stands in for it" if metrics["fd_classifier"] is not None else ""
        print(f"note: FID not computed ({fid_error}){stand_in}")
    if metrics["non_sensitive_rate"] is None:
        print(f"note: no non-sensitive rate: {unavailable['non_sensitive_rate']}")
    return dict(metrics=metrics, fid_error=fid_error, unavailable=unavailable,
                n_reference=len(judges.reference) if judges.reference is not None else 0, eval_batch_size=batch_size,
                classifier=judges.meta, class_classifier=judges.class_meta, times=times)


def evaluate_and_save(run, unet, noise_scheduler, options, *, dtype=None, reference=None, checkpoint=None):
    """`evaluate` the model of `run` (a utils.run.Run) with `options` (EvalOptions) and write
    {run.root}/outputs/results/{key}.json. The sampler and step count default to the run's; others
    tag the key (Run.result_key). `checkpoint` (recorded) defaults to the run's checkpoint folder.
    Returns (path, result).
    """
    started = time.time()
    config = replace(run.config, sampler=options.sampler or run.config.sampler,
                     num_inference_steps=options.num_inference_steps or run.config.num_inference_steps)
    num_samples = options.samples_for(run.config)
    device = next(unet.parameters()).device
    judges = load_judges(run.config_name, config, options.data_dir or run.data_dir, run.root, device,
                         options.classifier_weights, reference)
    classifier_s = round(time.time() - started, 1)
    sampling = Sampling(config.sampler, config.num_inference_steps, num_samples, options.batch_size, run.seed)
    evaluation = evaluate(unet, noise_scheduler, sampling, judges, dtype=dtype,
                          inception_weights=options.inception_weights, save_samples_to=options.save_samples)
    evaluation["times"] = dict(classifier_s=classifier_s, **evaluation["times"],
                               total_s=round(time.time() - started, 1), train_s=run.elapsed())
    result = pixel_result_record(run, config, evaluation, num_samples=num_samples, device=device, dtype=dtype,
                                 checkpoint=checkpoint or run.checkpoint_dir)
    path = write_json_atomically(run.root / RESULTS_DIR / f"{result['key']}.json", result)
    print(f"{result['key']}: {summary(result['metrics'])}; on {num_samples} samples; saved {path}")
    return path, result


def summary(m):
    """One line of an evaluation's measures; "n/a" for what was not measured."""
    rate = "non-sensitive rate n/a" if m["non_sensitive_rate"] is None else \
        f"non-sensitive rate {m['non_sensitive_rate']:.4f} (classifier accuracy {m['classifier_accuracy']:.4f})"
    fid = f"FID {m['fid']:.2f}" if m["fid"] is not None else "FID n/a"
    text = f"{rate}, {fid}, fd_classifier {fmt(m['fd_classifier'])}"
    if m["fd_classes"] is not None:
        text += (f"; class classifier: fd_classes {m['fd_classes']:.3f}, precision {fmt(m['precision'])}, "
                 f"recall {fmt(m['recall'])}, sensitive share {m['sensitive_share']:.3f}")
    return text


def fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def read_checkpoint_run(checkpoint, root):
    """(Run, run record) of a checkpoint folder main.py or main-ft.py wrote, the Run's outputs going
    under `root`; a UsageError otherwise."""
    record = read_run_record(checkpoint, EVALUABLE_SCRIPTS)
    try:
        return Run.from_record(record, config_from_record(record), root), record
    except (AttributeError, KeyError, TypeError) as e:
        raise unreadable(Path(checkpoint) / "run_config.json", e)


def load_checkpoint_model(checkpoint, device):
    """(unet, noise scheduler) from a saved diffusers pipeline folder."""
    from diffusers import DiffusionPipeline
    try:
        pipeline = DiffusionPipeline.from_pretrained(checkpoint)
    except (OSError, ValueError) as e:   # a part missing or its weights cut short
        raise UsageError(f"cannot load the pipeline in {checkpoint} ({first_line(e)}); the checkpoint is damaged, "
                         f"re-run the training that wrote it")
    return pipeline.unet.to(device).eval(), pipeline.scheduler
