"""Which run a folder given to evaluate.py is: a checkpoint main.py or main-ft.py wrote (its run record
says everything), a training state of such a run (a point of its learning curve), or a pixel-space
diffusers pipeline this project did not train, which needs the data to judge it against (a config's
test set and judges, or an image folder) and samples as it samples by itself unless told otherwise.
"""
import inspect
from dataclasses import fields, replace
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from configs import DEFAULT_FOLDER_CONFIG, get_config
from models import IMAGE_CHANNELS, SAMPLERS, sampler_for_scheduler
from models.pretrained import load_pipeline_configs, unet_image_shape
from utils.checkpointing import CHECKPOINT_PREFIX, MODEL_FILE, STATE_SUFFIX, TRAINING_STATE_FILE, checkpoint_dir_for, \
    read_training_state, state_training_seconds
from utils.errors import UsageError, first_line
from utils.evaluation import load_checkpoint_model, read_checkpoint_run
from utils.files import PIPELINE_INDEX, RUN_CONFIG_FILE
from utils.folders import CHANNEL_MODES, folder_config, folder_name, scan_folder
from utils.records import PIPELINE_SCRIPT, STATE_TAG, check_same_settings, training_settings
from utils.run import DEFAULT_DATA_DIR, Run, RunRequest

FOREIGN_SEED = 0          # a pipeline without a run record has no seed of its own
# A multi-process run saves its training states from the DistributedDataParallel wrapper, whose
# parameter names carry this prefix.
DDP_PREFIX = "module."


class PipelineRun(Run):
    """A pipeline this project did not train, evaluated as a run is: its folder's name stands where a
    run's algorithm does (its row in report.py) and, with the data's name, the sampler, the step count
    and the seed, makes its key: pipeline_{name}_{data}_{sampler}_steps{N}_{seed}. No training lies
    behind it: no PU counts, no training time."""

    @property
    def key(self):
        config = self.config
        return "_".join([PIPELINE_SCRIPT, self.algorithm, self.config_name, config.sampler,
                         f"steps{config.num_inference_steps}", str(self.seed)])

    def elapsed(self):
        return None


def is_foreign_pipeline(folder):
    """A saved pipeline without this project's run record."""
    folder = Path(folder)
    return (folder / PIPELINE_INDEX).is_file() and not (folder / RUN_CONFIG_FILE).is_file()


class TrainingStateRun(Run):
    """A finished run judged at one of its training states: its training time is the state's, that of
    the training loop up to it (None where the state predates recording it)."""

    def elapsed(self):
        return self.train_seconds


def is_training_state(folder):
    """A checkpoint-STEP folder of training state (utils.checkpointing)."""
    return (Path(folder) / TRAINING_STATE_FILE).is_file()


def default_output_dir(checkpoint):
    """The run's root: the folder above checkpoints/{key} (a training state's run's), or the current folder."""
    checkpoint = Path(checkpoint).resolve()
    if is_training_state(checkpoint) and checkpoint_dir_for(checkpoint) is not None:
        checkpoint = checkpoint_dir_for(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else Path(".")


def pipeline_sampling(index, scheduler_config):
    """(sampler, steps) a pipeline draws with by itself: its scheduler's class as a models.SAMPLERS name,
    and the default step count of its class's __call__ (DDPMPipeline 1000, DDIMPipeline 50); None for
    either that cannot be told."""
    import diffusers
    sampler = sampler_for_scheduler(scheduler_config.get("_class_name"))
    pipeline_cls = getattr(diffusers, str(index.get("_class_name")), None)
    steps = None
    if pipeline_cls is not None:
        parameter = inspect.signature(pipeline_cls.__call__).parameters.get("num_inference_steps")
        steps = parameter.default if parameter is not None and isinstance(parameter.default, int) else None
    return sampler, steps


def judged_config(pipeline_dir, channels, size, config_name=None, train_data_dir=None):
    """(name, Config) of the data a pipeline taking `channels`-channel `size` px images is judged against:
    the --train_data_dir folder (resized to the model's size; `config_name` the judge's recipe) or the
    registry config `config_name`; refused (UsageError, naming what fits) where the images do not fit."""
    takes = f"{pipeline_dir} takes {channels}-channel {size} px images"
    if train_data_dir:
        if channels not in CHANNEL_MODES or size is None:
            raise UsageError(f"{takes}; image folders give square 1- or 3-channel images")
        folder = scan_folder(train_data_dir)
        recipe = get_config(config_name or DEFAULT_FOLDER_CONFIG)
        return folder.name, folder_config(replace(recipe, image_size=size, channels=channels), folder)
    config = get_config(config_name)
    if channels != IMAGE_CHANNELS or size != config.image_size:
        raise UsageError(f"{takes} but {config.dataset} is {IMAGE_CHANNELS}-channel {config.image_size} px; judge it "
                         f"against image folders instead (--train_data_dir DIR: images resized to {size} px)")
    return config_name, config


def foreign_pipeline_run(pipeline_dir, root, *, config_name=None, train_data_dir=None, sampler=None,
                         num_inference_steps=None, seed=None, data_dir=None):
    """The PipelineRun of a pipeline this project did not train, judged against `config_name`'s data or the
    `train_data_dir` folder, sampled with `sampler` and `num_inference_steps` (default: its own) from
    `seed` (default FOREIGN_SEED), its outputs going under `root`."""
    if not (config_name or train_data_dir):
        raise UsageError(f"{pipeline_dir} holds a pipeline without {RUN_CONFIG_FILE} (not trained by this "
                         f"project): pass --config_name NAME or --train_data_dir DIR to say what to judge it against")
    unet_config, scheduler_config, index = load_pipeline_configs(pipeline_dir, "the pipeline")
    own_sampler, own_steps = pipeline_sampling(index, scheduler_config)
    sampler, steps = sampler or own_sampler, num_inference_steps or own_steps
    if sampler is None or steps is None:
        raise UsageError(f"cannot tell how {index.get('_class_name')} with {scheduler_config.get('_class_name')} samples; "
                         f"pass --sampler ({', '.join(SAMPLERS)}) and --num_inference_steps")
    name, config = judged_config(pipeline_dir, *unet_image_shape(unet_config), config_name, train_data_dir)
    request = RunRequest(data_dir=data_dir or DEFAULT_DATA_DIR, output_dir=str(root))
    return PipelineRun(script=PIPELINE_SCRIPT, config_name=name,
                       config=replace(config, sampler=sampler, num_inference_steps=steps),
                       algorithm=folder_name(pipeline_dir), beta=0.0, seed=FOREIGN_SEED if seed is None else seed,
                       pu_correction=None, request=request)


def trained_run(checkpoint, root, *, config_name=None, train_data_dir=None, seed=None):
    """(Run, run record) of a checkpoint main.py or main-ft.py wrote, its outputs going under `root`;
    `train_data_dir` says where a folder run's data has moved. `config_name` and `seed` are for foreign
    pipelines: a run records its own, so either is refused (UsageError) rather than ignored."""
    run, record = read_checkpoint_run(checkpoint, root)
    if config_name:
        raise UsageError(f"--config_name is for pipelines this project did not train; {checkpoint} records its "
                         f"own config ({run.config_name})")
    if seed is not None and seed != run.seed:
        raise UsageError(f"--seed is for pipelines this project did not train; {checkpoint} is evaluated with "
                         f"its run's seed, {run.seed}")
    if train_data_dir:
        if not run.config.train_data_dir:
            raise UsageError(f"--train_data_dir: {checkpoint} trained on {run.config.dataset}, not on an image "
                             f"folder; leave it out (--data_dir says where that dataset lies)")
        run.config = replace(run.config, train_data_dir=str(scan_folder(train_data_dir).root))
    return run, record


def training_state_run(state, root, *, config_name=None, train_data_dir=None, seed=None):
    """(TrainingStateRun, run record) of a training state of a finished run, judged as the run is (its
    record, split, sampler and seed; `root` and the data arguments as for trained_run), keyed as the
    run's with the tag ckpt{step}. The weights are the state's, in the run's pipeline. Refused
    (UsageError), before anything is written: a state that does not lie in its run's
    checkpoints/{key}.state/, one of an unfinished run, one that another key or other settings made,
    and one whose files are damaged."""
    state = Path(state)
    pipeline = checkpoint_dir_for(state)
    if pipeline is None:
        raise UsageError(f"{state} lies outside a checkpoints/{{key}}{STATE_SUFFIX}/ folder: a training state is "
                         f"judged where --checkpointing_steps wrote it, beside its run's pipeline checkpoints/{{key}}/")
    try:
        saved = read_training_state(state)
    except ValueError as e:   # a damaged training_state.json
        raise UsageError(f"{state / TRAINING_STATE_FILE} is damaged ({first_line(e)}); evaluate another state "
                         f"under {state.parent}")
    if not (pipeline / RUN_CONFIG_FILE).is_file():
        raise UsageError(f"{state} is a training state of run {saved.get('key')}, whose pipeline {pipeline} is not "
                         f"saved: its states are judged once it has finished (re-run its training command with "
                         f"--resume_from_checkpoint latest)")
    run, record = trained_run(pipeline, root, config_name=config_name, train_data_dir=train_data_dir, seed=seed)
    if saved.get("key") != run.key:
        raise UsageError(f"{state} is a training state of run {saved.get('key')}, not of {run.key}, the run saved "
                         f"beside it in {pipeline}; give a {CHECKPOINT_PREFIX}STEP folder of that run")
    # The key leaves settings out (the precision, the recipe's numbers): a state of a run started again
    # with other ones, and killed before it replaced the pipeline, is not this run's.
    now = training_settings(record["config"], record.get("pu_correction"), neggrad_weight=record.get("neggrad_weight"))
    if "mixed_precision" in record:
        now.update(mixed_precision=record["mixed_precision"])
    check_same_settings(saved.get("settings", {}), now, f"{state} was",
                        f"evaluate a state that the training of {pipeline} saved")
    try:   # the weights' header names every tensor's extent, so a cut-short file fails here
        with safe_open(state / MODEL_FILE, framework="pt"):
            pass
        seconds = state_training_seconds(state)
    except Exception as e:   # a damaged or missing file: safetensors, pickle and torch.load raise their own kinds
        raise UsageError(f"{state} is damaged or incomplete ({type(e).__name__}: {first_line(e, '')}); evaluate "
                         f"another state under {state.parent}")
    judged = TrainingStateRun(**{f.name: getattr(run, f.name) for f in fields(run)})
    judged.tags = (*run.tags, f"{STATE_TAG}{saved['step']}")
    judged.train_seconds = None if seconds is None else round(seconds, 1)
    return judged, record


def load_judged_model(folder, device):
    """(unet, noise scheduler) that evaluate.py judges: a pipeline folder's, or a training state's weights
    in its run's pipeline."""
    if not is_training_state(folder):
        return load_checkpoint_model(folder, device)
    unet, noise_scheduler = load_checkpoint_model(checkpoint_dir_for(folder), device)
    weights = load_file(Path(folder) / MODEL_FILE, device=str(device))
    consume_prefix_in_state_dict_if_present(weights, DDP_PREFIX)
    unet.load_state_dict(weights)
    return unet, noise_scheduler
