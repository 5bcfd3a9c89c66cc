"""The experiments the entry scripts run on a resolved `Run`: train, save the pipeline, grids, evaluate.

`run_pixel_experiment` serves main.py and main-ft.py, `run_sd_experiment` main-sd.py. Both train
with the one loop (utils.training) and differ only in their data, in how a batch becomes model
input and in what they sample and judge afterwards. Everything that can fail on bad input is
checked before the first write.
"""
import json
from dataclasses import dataclass

import torch

from utils.data import load_pu_data
from utils.evaluation import check_eval_args, evaluate_and_save, load_checkpoint_model
from utils.files import RESULTS_DIR, RUN_CONFIG_FILE, save_folder_atomically, write_file_atomically
from utils.records import run_record, sd_result_record
from utils.sampling import GRID_SAMPLES, Sampling, generate, sampling_precision, save_grid
from utils.seeding import seed_everything
from utils.selection import select_pixel_data, select_sd_files
from utils.training import TrainingData, train


@dataclass(frozen=True)
class SDOptions:
    """main-sd.py's own settings: what the Stable Diffusion run trains and how it judges."""

    num_eval_samples: int          # images per prompt judged by CLIP after training; 0 skips
    clip_model: str                # hub id or folder of the CLIP judge
    gradient_checkpointing: bool = False
    num_workers: int = 0           # loader processes that decode and resize the images


def train_run(run, model, noise_scheduler, data, trainable_parameters=None):
    """Seed and train `model` on `data` (a TrainingData) with the run's spec, logging to the run's
    TensorBoard folder; the run's training time is fixed when the loop ends, so the grid and
    evaluation after it do not count."""
    seed_everything(run.seed)
    model = train(run.accelerator, model, noise_scheduler, data, run.training_spec, log_dir=run.log_dir,
                  trainable_parameters=trainable_parameters, checkpointing=run.checkpointing)
    run.finish_training()
    return model


def save_pipeline(run, pipeline, record):
    """Save `pipeline` (save_pretrained) and the run record to checkpoints/{key}/, atomically."""

    def write(tmp):
        pipeline.save_pretrained(tmp)
        (tmp / RUN_CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str))
    path = save_folder_atomically(run.checkpoint_dir, write)
    for old in run.replaced:   # they described the model just replaced; report.py would average them in
        old.unlink(missing_ok=True)
    return path


def save_sample_grid(run, unet, noise_scheduler, dtype, sampler=None, num_inference_steps=None):
    """The run's 8 x 8 grid of seeded samples, written atomically to outputs/images/{key}.png; with
    another sampler or step count than the run's, named by the result key they give (Run.result_key)."""
    sampler, steps = sampler or run.config.sampler, num_inference_steps or run.config.num_inference_steps
    images = generate(unet, noise_scheduler, Sampling(sampler, steps, GRID_SAMPLES, GRID_SAMPLES, run.seed), dtype=dtype,
                      desc="sample grid")
    path = run.image_dir / f"{run.result_key(steps, sampler)}.png"
    return write_file_atomically(path, lambda p: save_grid(images, p))


def complete_finished_run(run, evaluation):
    """A finished run re-run: draw the grid a failed write left missing, and evaluate where no result
    with these evaluation settings exists; the saved pipeline is loaded only if either is needed."""
    if not run.accelerator.is_main_process:
        return
    grid = run.image_dir / f"{run.key}.png"
    result = run.root / RESULTS_DIR / f"{run.result_key(run.config.num_inference_steps)}.json"
    num_samples = evaluation.samples_for(run.config)
    evaluate = bool(num_samples) and not (
        result.is_file() and json.loads(result.read_text()).get("num_samples") == num_samples)
    if grid.is_file() and not evaluate:
        print(f"{run.key}: grid and results are there; nothing to do")
        return
    device, dtype = sampling_precision(run.accelerator.device, run.accelerator.mixed_precision)
    unet, noise_scheduler = load_checkpoint_model(run.checkpoint_dir, device)
    if not grid.is_file():
        print(f"saved {save_sample_grid(run, unet, noise_scheduler, dtype)}")
    if evaluate:
        evaluate_and_save(run, unet, noise_scheduler, evaluation, dtype=dtype)


def run_pixel_experiment(run, unet, noise_scheduler, pipeline_cls, evaluation):
    """Train `unet` on `run`'s PU data (the images its algorithm selects, utils.selection), save a
    `pipeline_cls` checkpoint and an 8 x 8 sample grid, then (unless `evaluation`,
    utils.evaluation.EvalOptions, asks for 0 samples) evaluate it into outputs/results/{key}.json.

    Returns (unwrapped unet, data); (None, None) for a finished run re-run.
    """
    config, accelerator = run.config, run.accelerator
    check_eval_args(evaluation.classifier_weights, evaluation.inception_weights, evaluation.save_samples)
    if run.done:
        complete_finished_run(run, evaluation)
        return None, None
    with accelerator.main_process_first():   # one process downloads; the others then read its files
        data = load_pu_data(config, run.data_dir, run.seed)
    counts = data.counts()   # the split drawn; a selection's own counts are in run.selection
    if accelerator.is_main_process:
        u = f"{counts['n_unlabeled']} unlabeled" if data.folder else \
            f"{counts['n_u_normal']} normal + {counts['n_u_sensitive']} sensitive"
        test = f"{counts['n_test']} normal + {counts['n_test_sensitive']} sensitive" if data.folder else counts["n_test"]
        print(f"{run.key}: U = {u}, S = {counts['n_s']}, test = {test}; "
              f"{sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M parameters on {accelerator.device} "
              f"({accelerator.mixed_precision})")
    data = select_pixel_data(run, data, evaluation.classifier_weights)
    unet = train_run(run, unet, noise_scheduler, TrainingData(data.train, split=data.split))
    if not accelerator.is_main_process:
        return unet, data
    record = run_record(run, split=counts, device=str(accelerator.device),
                        mixed_precision=accelerator.mixed_precision)
    path = save_pipeline(run, pipeline_cls(unet=unet, scheduler=noise_scheduler), record)
    device, dtype = sampling_precision(accelerator.device, accelerator.mixed_precision)
    grid = save_sample_grid(run, unet, noise_scheduler, dtype)
    print(f"saved {path} and {grid}")
    if evaluation.samples_for(config):
        evaluate_and_save(run, unet, noise_scheduler, evaluation, dtype=dtype, reference=data.test)
    return unet, data


def run_sd_experiment(run, pipe, files, clip, options):
    """Fine-tune `pipe`'s UNet on the SD folder `files` (the images its algorithm selects,
    utils.selection; VAE and text encoder frozen), save the pipeline and a grid per prompt, and (with a
    `clip` judge) the CLIP evaluation; `options` are the script's SDOptions.

    Frozen fp16 copies of the VAE and text encoder run on the device; the fp32 originals stay in
    `pipe` and are saved unchanged.
    """
    from diffusers import StableDiffusionPipeline

    from models.pretrained import training_noise_scheduler
    from utils.sd import SDImageDataset, frozen_copy, make_sd_model_input
    from utils.sd_eval import sample_and_score, save_prompt_grids, write_results

    config, accelerator = run.config, run.accelerator
    selected, split = select_sd_files(run, files, clip, options.clip_model)
    noise_scheduler = training_noise_scheduler(pipe.scheduler, config.pretrained_model)
    device, dtype = sampling_precision(accelerator.device, accelerator.mixed_precision)
    dtype = dtype or torch.float32
    vae = frozen_copy(pipe.vae, accelerator.device, dtype)
    text_encoder = frozen_copy(pipe.text_encoder, accelerator.device, dtype)
    if options.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    # Images are decoded per item: main-sd.py offers no --data_on_device, and prepare() leaves the dataset in place.
    data = TrainingData(SDImageDataset(selected, config, pipe.tokenizer), to_model_input=make_sd_model_input(vae, text_encoder), split=split,
                        num_workers=options.num_workers)
    unet = train_run(run, pipe.unet, noise_scheduler, data, trainable_parameters=pipe.unet.parameters())
    del vae, text_encoder
    accelerator.free_memory()   # collects the frozen copies before sampling
    if not accelerator.is_main_process:
        return unet
    pipe = StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False)
    record = run_record(run, data=dict(n_unlabeled=len(files[0]), n_positive=len(files[1])),
                        device=str(accelerator.device), mixed_precision=accelerator.mixed_precision)
    path = save_pipeline(run, pipe, record)
    pipe.to(device, dtype)
    images, metrics, eval_times = sample_and_score(pipe, config, run.seed, options.num_eval_samples, clip, device,
                                                   num_grid=config.grid_samples)
    grids = save_prompt_grids(images, config, run.image_dir, run.key)
    print(f"saved {path}, " + ", ".join(map(str, grids)))
    if metrics is not None:
        result = sd_result_record(run, config, metrics, num_samples=options.num_eval_samples,
                                  clip_model=options.clip_model,
                                  times=dict(train_seconds=record["train_seconds"], **eval_times),
                                  sampler=type(pipe.scheduler).__name__)
        path = write_results(run.root, result)
        print(f"{run.key}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()) + f"; saved {path}")
    return unet
