"""The experiments the entry scripts run on a resolved `Run`: train, save the pipeline, grids, evaluate.

`run_pixel_experiment` serves main.py and main-ft.py, `run_sd_experiment` main-sd.py. Both train
with the one loop (utils.training) and differ only in their data, in how a batch becomes model
input and in what they sample and judge afterwards. Everything that can fail on bad input is
checked before the first write.
"""
import json

import torch

from utils.data import load_pu_data
from utils.evaluation import check_eval_args, evaluate_and_save, load_checkpoint_model
from utils.files import RESULTS_DIR, write_file_atomically
from utils.run import save_pipeline
from utils.sampling import GRID_SAMPLES, generate, sampling_precision, save_grid
from utils.seeding import seed_everything
from utils.training import train


def train_run(run, model, noise_scheduler, dataset, **loop_options):
    """Seed and train `model` with the run's spec, logging to the run's TensorBoard folder; the run's
    training time is fixed when the loop ends, so the grid and evaluation after it do not count."""
    seed_everything(run.seed)
    model = train(run.accelerator, model, noise_scheduler, dataset, run.training_spec, log_dir=run.log_dir,
                  checkpointing=run.checkpointing, **loop_options)
    run.finish_training()
    return model


def estimate_beta_from_images(data_dir, seed, classifier_weights=None):
    """main.py's and main-ft.py's --beta auto: the class prior of the run's own PU split (utils.prior)."""
    from utils.prior import estimate_prior_for_images

    def estimate(config, accelerator):
        with accelerator.main_process_first():   # one process downloads; the others then read its files
            data = load_pu_data(config, data_dir, seed)
        return estimate_prior_for_images(data.train, config, accelerator.device, seed=seed,
                                         weights_path=classifier_weights)
    return estimate


def estimate_beta_from_sd_folders(data_dir, clip_model, seed):
    """main-sd.py's --beta auto: the class prior of 0_unlabeled/ given 1_positive/, in CLIP image features."""
    from models.pretrained import load_clip
    from utils.prior import estimate_prior_for_sd
    from utils.sd import validate_sd_folder

    def estimate(config, accelerator):
        with accelerator.main_process_first():   # one process downloads CLIP; the others then read its files
            clip = load_clip(clip_model)
        return estimate_prior_for_sd(validate_sd_folder(data_dir, config), clip, accelerator.device, seed=seed)
    return estimate


def eval_samples(run):
    """The number of samples the run's evaluation draws (--num_eval_samples, else the config's)."""
    n = run.args.num_eval_samples
    return run.config.num_eval_samples if n is None else n


def save_sample_grid(run, unet, noise_scheduler, dtype, sampler=None, num_inference_steps=None):
    """The run's 8 x 8 grid of seeded samples, written atomically to outputs/images/{key}.png; with
    another sampler or step count than the run's, named by the result key they give (Run.result_key)."""
    sampler, steps = sampler or run.config.sampler, num_inference_steps or run.config.num_inference_steps
    images = generate(unet, noise_scheduler, sampler=sampler, num_samples=GRID_SAMPLES, num_inference_steps=steps,
                      batch_size=GRID_SAMPLES, seed=run.seed, dtype=dtype, desc="sample grid")
    path = run.image_dir / f"{run.result_key(steps, sampler)}.png"
    return write_file_atomically(path, lambda p: save_grid(images, p))


def evaluate_run(run, unet, noise_scheduler, device, dtype, reference=None):
    """The evaluation after training, with the run's --num_eval_samples and evaluation options."""
    args = run.args
    evaluate_and_save(run, unet, noise_scheduler, num_samples=eval_samples(run), batch_size=args.eval_batch_size,
                      data_dir=args.data_dir, device=device, dtype=dtype, reference=reference,
                      classifier_weights=args.classifier_weights, inception_weights=args.inception_weights)


def complete_finished_run(run):
    """A finished run re-run: draw the grid a failed write left missing, and evaluate where no result
    with these evaluation settings exists; the saved pipeline is loaded only if either is needed."""
    if not run.accelerator.is_main_process:
        return
    grid = run.image_dir / f"{run.key}.png"
    result = run.root / RESULTS_DIR / f"{run.result_key(run.config.num_inference_steps)}.json"
    evaluate = bool(eval_samples(run)) and not (
        result.is_file() and json.loads(result.read_text()).get("num_samples") == eval_samples(run))
    if grid.is_file() and not evaluate:
        print(f"{run.key}: grid and results are there; nothing to do")
        return
    device, dtype = sampling_precision(run.accelerator.device, run.accelerator.mixed_precision)
    unet, noise_scheduler = load_checkpoint_model(run.checkpoint_dir, device)
    if not grid.is_file():
        print(f"saved {save_sample_grid(run, unet, noise_scheduler, dtype)}")
    if evaluate:
        evaluate_run(run, unet, noise_scheduler, device, dtype)


def run_pixel_experiment(run, unet, noise_scheduler, pipeline_cls):
    """Train `unet` on `run`'s PU data, save a `pipeline_cls` checkpoint and an 8 x 8 sample grid,
    then (unless --num_eval_samples 0) evaluate it into outputs/results/{key}.json (utils.evaluation).

    Returns (unwrapped unet, data); (None, None) for a finished run re-run.
    """
    args, config, accelerator = run.args, run.config, run.accelerator
    check_eval_args(args.classifier_weights, args.inception_weights)
    if run.done:
        complete_finished_run(run)
        return None, None
    with accelerator.main_process_first():   # one process downloads; the others then read its files
        data = load_pu_data(config, args.data_dir, run.seed)
    if accelerator.is_main_process:
        print(f"{run.key}: U = {data.split.n_u_normal} normal + {data.split.n_u_sensitive} sensitive, "
              f"S = {data.split.n_s}, test = {len(data.test)}; {sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M "
              f"parameters on {accelerator.device} ({accelerator.mixed_precision})")
    unet = train_run(run, unet, noise_scheduler, data.train, split=data.split)
    if not accelerator.is_main_process:
        return unet, data
    record = run.to_record(split=dict(n_u_normal=data.split.n_u_normal, n_u_sensitive=data.split.n_u_sensitive,
                                      n_s=data.split.n_s, n_test=len(data.test)),
                           device=str(accelerator.device), mixed_precision=accelerator.mixed_precision)
    path = save_pipeline(run, pipeline_cls(unet=unet, scheduler=noise_scheduler), record)
    device, dtype = sampling_precision(accelerator.device, accelerator.mixed_precision)
    grid = save_sample_grid(run, unet, noise_scheduler, dtype)
    print(f"saved {path} and {grid}")
    if eval_samples(run):
        evaluate_run(run, unet, noise_scheduler, device, dtype, reference=data.test)
    return unet, data


def run_sd_experiment(run, pipe, files, clip):
    """Fine-tune `pipe`'s UNet on the SD folder `files` (VAE and text encoder frozen), save the
    pipeline and a grid per prompt, and (with a `clip` judge) the CLIP evaluation.

    Frozen fp16 copies of the VAE and text encoder run on the device; the fp32 originals stay in
    `pipe` and are saved unchanged.
    """
    from diffusers import StableDiffusionPipeline

    from models.pretrained import training_noise_scheduler
    from utils.data import place_on_device
    from utils.sd import SDImageDataset, frozen_copy, make_sd_model_input
    from utils.sd_eval import results_record, sample_and_score, save_prompt_grids, write_results

    args, config, accelerator = run.args, run.config, run.accelerator
    noise_scheduler = training_noise_scheduler(pipe.scheduler, args.pretrained_model)
    device, dtype = sampling_precision(accelerator.device, accelerator.mixed_precision)
    dtype = dtype or torch.float32
    vae = frozen_copy(pipe.vae, accelerator.device, dtype)
    text_encoder = frozen_copy(pipe.text_encoder, accelerator.device, dtype)
    if args.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    # Refuses --data_on_device yes (images are decoded per item) before the loop writes its logs.
    dataset = place_on_device(SDImageDataset(files, config, pipe.tokenizer), accelerator.device, args.data_on_device)
    unet = train_run(run, pipe.unet, noise_scheduler, dataset,
                     to_model_input=make_sd_model_input(vae, text_encoder), num_workers=args.num_workers,
                     trainable_parameters=pipe.unet.parameters())
    del vae, text_encoder
    accelerator.free_memory()   # collects the frozen copies before sampling
    if not accelerator.is_main_process:
        return unet
    pipe = StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False)
    record = run.to_record(data=dict(n_unlabeled=len(files[0]), n_positive=len(files[1])),
                           device=str(accelerator.device), mixed_precision=accelerator.mixed_precision)
    path = save_pipeline(run, pipe, record)
    pipe.to(device, dtype)
    images, metrics, eval_times = sample_and_score(pipe, config, run.seed, args.num_eval_samples, clip, device,
                                                   num_grid=config.grid_samples)
    grids = save_prompt_grids(images, config, run.image_dir, run.key)
    print(f"saved {path}, " + ", ".join(map(str, grids)))
    if metrics is not None:
        result = results_record(run, config, metrics, args.num_eval_samples, args.clip_model,
                                dict(train_seconds=record["train_seconds"], **eval_times), type(pipe.scheduler).__name__)
        path = write_results(run.root, result)
        print(f"{run.key}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()) + f"; saved {path}")
    return unet
