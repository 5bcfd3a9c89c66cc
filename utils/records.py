"""Run keys, run records and result records: the one module that forms, writes and reads them.

A run's key is `{script}_{config}_{algorithm}_{beta}_{tags}_{seed}` (`run_key`), with a short tag
for each setting that differs from its config's (`key_tags`; report.py reads them back with
`tagged_value`); a run on an image folder has the folder's name where the config's stands. A training run saves its record as `checkpoints/{key}/run_config.json`
(`run_record`); each evaluation writes `outputs/results/{key}.json` (`pixel_result_record`,
`sd_result_record`, in the schema report.py reads); the evaluators read a run back with
`read_run_record` and `config_from_record`. Whether a finished run or a training state was made
with the settings of the run at hand is decided here too, once (`training_settings`,
`check_same_settings`).
"""
import json
import platform
from dataclasses import fields
from pathlib import Path

from configs import Config
from utils.errors import UsageError
from utils.files import PIPELINE_INDEX, RUN_CONFIG_FILE

# Scripts whose key names the config; main-sd.py has a single experiment (DESIGN section 3).
SCRIPTS_KEYED_BY_CONFIG = ("main", "main_ft")
# Settings a user may change that alter what is trained, sampled or measured, in key order, with
# their short key tags: `--n_s 30` makes main_Digits_even_PU_0.1_nS30_0. Settings left at the
# config's value add nothing, so default runs keep the keys DESIGN section 3 gives them.
# main-ft.py's --pretrained_model is recorded, not keyed: a local copy of the config's hub model
# must keep the key that the hub id gives.
KEY_TAGS = {"n_u_normal": "nUn", "n_u_sensitive": "nUs", "n_s": "nS", "n_test": "nT", "num_epochs": "ep",
            "batch_size": "bs", "learning_rate": "lr", "num_inference_steps": "steps", "resolution": "res",
            "image_size": "res", "channels": "ch"}
CORRECTION_TAG = "nn"                   # --pu_correction nn (abs is the default)
NEGGRAD_WEIGHT_TAG = "w"                # --neggrad_weight 0.3 makes main_Digits_even_NegGrad_0.0_w0.3_0
STATE_TAG = "ckpt"                      # evaluate.py on the training state at step 500 of main_MNIST_even_PU_0.1_0
                                        # keys its result main_MNIST_even_PU_0.1_ckpt500_0
# Config fields that only change sampling or evaluation, or say where the data lies (a moved folder
# holds the same images); every other field must match to resume or to count a run as finished.
FREE_FIELDS = ("sampler", "num_inference_steps", "num_eval_samples", "n_test", "classifier_size", "clip_model",
               "data_dir")
# Fields of a training state's settings beyond a finished run's: they shape the shards and the numbers.
STATE_ONLY_SETTINGS = ("num_processes", "mixed_precision")
# Config fields added after runs were recorded without them, with their defaults: left out of the settings
# at the default, so that those runs and training states still match.
ADDED_FIELDS = {"channels": 3, "train_data_dir": ""}
MISSING = object()
# What a folder run's results give as their dataset (the folder itself is recorded as train_data_dir).
FOLDER_DATASET = "folder"
# The script a result names for a pipeline this project did not train (evaluate.py on any pipeline folder).
PIPELINE_SCRIPT = "pipeline"


# --- Keys and key tags ---

def format_beta(beta):
    return repr(float(beta))


def tag_value(value):
    """A setting's value as it appears in a key: floats in their shortest form (1e-05, 0.001)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def key_tags(config, base, correction, default_correction, neggrad_weight=None, default_neggrad_weight=None):
    """The key tags of the settings in which `config` differs from `base`, in KEY_TAGS order, then the
    correction's and NegGrad's weight's where they differ from their defaults."""
    tags = [f"{tag}{tag_value(getattr(config, name))}" for name, tag in KEY_TAGS.items()
            if hasattr(base, name) and getattr(config, name) != getattr(base, name)]
    weight = [f"{NEGGRAD_WEIGHT_TAG}{tag_value(float(neggrad_weight))}"] \
        if neggrad_weight is not None and neggrad_weight != default_neggrad_weight else []
    return tags + ([CORRECTION_TAG] if correction != default_correction else []) + weight


def tagged_value(tags, name):
    """The value of setting `name` that one of `tags` records (an int or float), or None if none does."""
    prefix = KEY_TAGS[name]
    for tag in tags:
        text = tag[len(prefix):]
        if tag.startswith(prefix) and text[:1].isdigit():
            return int(text) if text.isdigit() else float(text)
    return None


def without_tag(tags, name):
    """`tags` less the one that records setting `name`."""
    return tuple(t for t in tags if tagged_value([t], name) is None)


def run_key(script, config_name, algorithm, beta, tags, seed):
    """`{script}[_{config}]_{algorithm}_{beta}[_{tags}]_{seed}`; `beta` is a number or the text "auto"."""
    name = [config_name] if script in SCRIPTS_KEYED_BY_CONFIG else []
    beta = beta if isinstance(beta, str) else format_beta(beta)
    return "_".join([script, *name, algorithm, beta, *tags, str(seed)])


def result_key(key, config, num_inference_steps, sampler=None):
    """The key of a run's results: its own, tagged _{sampler} and _steps{N} when sampled with another
    sampler or step count than its `config`'s, so such an evaluation never replaces the run's own."""
    if sampler is not None and sampler != getattr(config, "sampler", sampler):   # SD configs have no sampler
        key += f"_{sampler}"
    if num_inference_steps != config.num_inference_steps:
        key += f"_steps{num_inference_steps}"
    return key


# --- Whether saved settings match ---

def training_settings(config, correction, num_processes=None, mixed_precision=None, neggrad_weight=None):
    """What a run's outputs depend on, as JSON holds it: the config's training fields (a Config, an
    SDConfig or a record's config dict) and the correction; NegGrad's weight where there is one (its
    default may change, and a default run's key does not name it); for a training state also the
    process count and the precision."""
    values = config if isinstance(config, dict) else config.to_dict()
    settings = dict({k: v for k, v in values.items()
                     if k not in FREE_FIELDS and ADDED_FIELDS.get(k, MISSING) != v}, pu_correction=correction)
    if neggrad_weight is not None:
        settings.update(neggrad_weight=neggrad_weight)
    if num_processes is not None:
        settings.update(num_processes=num_processes, mixed_precision=mixed_precision)
    return json.loads(json.dumps(settings))


def check_same_settings(saved, now, made, remedy):
    """UsageError naming the first setting of `now` that `saved` holds otherwise: "{made} made with
    {name} = {saved value}, this run has {value}; {remedy}"."""
    for name, value in now.items():
        if saved.get(name) != value:
            raise UsageError(f"{made} made with {name} = {saved.get(name)!r}, this run has {value!r}; {remedy}")


# --- Records ---

def versions(*modules):
    """{python, torch, ...}: the version of Python and of each imported module named."""
    import importlib
    return dict(python=platform.python_version(),
                **{name: importlib.import_module(name).__version__ for name in modules})


TRAINING_PACKAGES = ("torch", "diffusers", "accelerate")
PIXEL_EVAL_PACKAGES = ("torch", "torchvision", "diffusers", "torchmetrics", "torch_fidelity", "numpy")
SD_EVAL_PACKAGES = ("torch", "diffusers", "transformers")


def run_identity(run):
    """The fields that name a run in its record and in every result of it; a NegGrad run adds its weight,
    a Filter or Clean run what its selection dropped (utils.selection.Selection.record)."""
    baselines = {k: v for k, v in dict(neggrad_weight=run.neggrad_weight, selection=run.selection).items()
                 if v is not None}
    return dict(script=run.script, config_name=run.config_name, algorithm=run.algorithm, beta=run.beta,
                beta_estimate=run.beta_estimate, seed=run.seed, pu_correction=run.pu_correction,
                key_tags=list(run.tags), **baselines)


def run_record(run, **extra):
    """A trained run as the JSON-ready dict saved as run_config.json beside its pipeline."""
    return dict(key=run.key, **run_identity(run), config=run.config.to_dict(), args=dict(run.command_line),
                versions=versions(*TRAINING_PACKAGES), train_seconds=run.elapsed(), **extra)


def pixel_result_record(run, config, evaluation, *, num_samples, device, dtype, checkpoint):
    """The result of evaluate.py or of the evaluation after training: the run's identity, how it was
    sampled (`config` carries the sampler and step count), the measures of `evaluation`."""
    data = dict(dataset=FOLDER_DATASET, train_data_dir=config.train_data_dir) if config.train_data_dir else \
        dict(dataset=config.dataset)
    # A pipeline this project did not train was judged against the data, not trained on it: no PU counts.
    counts = dict(n_u_normal=config.n_u_normal, n_u_sensitive=config.n_u_sensitive, n_s=config.n_s) \
        if run.script != PIPELINE_SCRIPT else dict(n_u_normal=None, n_u_sensitive=None, n_s=None)
    return dict(key=result_key(run.key, run.config, config.num_inference_steps, config.sampler), run_key=run.key,
                checkpoint=str(checkpoint), **run_identity(run), **data, **counts,
                sampler=config.sampler, num_inference_steps=config.num_inference_steps, num_samples=num_samples,
                device=str(device), sampling_dtype=str(dtype).replace("torch.", "") if dtype else "float32",
                **evaluation, versions=versions(*PIXEL_EVAL_PACKAGES))


def sd_result_record(run, config, metrics, *, num_samples, clip_model, times, sampler):
    """The CLIP evaluation of a Stable Diffusion run; `config` is the run's config as sampled
    (evaluate-sd.py may change the step count, which then tags the key, and the prompts, which tag it
    _{sensitive}_vs_{normal})."""
    key = result_key(run.key, run.config, config.num_inference_steps)
    if config.sample_prompts != run.config.sample_prompts:
        key += f"_{config.sample_prompts[0].name}_vs_{config.sample_prompts[1].name}"
    return dict(key=key, run_key=run.key,
                **run_identity(run), sampler=sampler, num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale, num_samples=num_samples, clip_model=clip_model,
                clip_labels=list(config.clip_labels), prompts={p.metric: p.prompt for p in config.sample_prompts},
                metrics=metrics, times=times, versions=versions(*SD_EVAL_PACKAGES))


def read_run_record(checkpoint, scripts, needs_pipeline=True):
    """The run_config.json of a checkpoint folder written by one of `scripts`; a UsageError naming
    what is wrong otherwise."""
    checkpoint = Path(checkpoint)
    record_file = checkpoint / RUN_CONFIG_FILE
    needed = [RUN_CONFIG_FILE, PIPELINE_INDEX] if needs_pipeline else [RUN_CONFIG_FILE]
    if not checkpoint.is_dir() or not all((checkpoint / name).is_file() for name in needed):
        writers = " or ".join(s.replace("_", "-") + ".py" for s in scripts)
        raise UsageError(f"{checkpoint} is not a checkpoint folder (it needs {' and '.join(needed)}); "
                         f"pass a checkpoints/ folder that {writers} wrote")
    try:
        record = json.loads(record_file.read_text())
        script = record.get("script")
    except (json.JSONDecodeError, AttributeError) as e:
        raise unreadable(record_file, e)
    if script not in scripts:
        raise UsageError(f"{checkpoint} was written by {script}; evaluate.py evaluates main.py and main-ft.py "
                         f"checkpoints, evaluate-sd.py main-sd.py ones")
    return record


def unreadable(record_file, error):
    return UsageError(f"{record_file} is unreadable or incomplete ({type(error).__name__}: {error}); "
                      f"re-run the training that wrote it")


def config_from_record(record, config_cls=Config):
    """The `config_cls` (a configs.Config) a run recorded: JSON turned its tuples into lists; fields added
    since keep their defaults."""
    known = {f.name for f in fields(config_cls)}
    values = {k: v for k, v in record["config"].items() if k in known}
    values["normal_classes"] = tuple(values["normal_classes"])
    values["unet"] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.get("unet", {}).items()}
    return config_cls(**values)
