"""Writing outputs so that nothing half-written ever looks complete, and where runs put them.

Every file or folder is written under a hidden temporary name beside its destination and renamed
into place (a rename within one file system is atomic), so a run killed mid-write leaves either
the old output or none, never a truncated one that a later step would trust.
"""
import json
import os
import shutil
from pathlib import Path

RUN_CONFIG_FILE = "run_config.json"          # the resolved run, saved beside its pipeline
PIPELINE_INDEX = "model_index.json"          # what save_pretrained writes at a pipeline's root
RESULTS_DIR = Path("outputs") / "results"    # {root}/outputs/results/{key}.json, read by report.py


def replace_dir(tmp, final):
    """Move the finished folder `tmp` to `final`, replacing an older one only after `tmp` is complete."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def write_file_atomically(path, write):
    """Call write(tmp_path), then rename tmp_path to `path`; if write fails, tmp_path is removed and
    `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomically(path, record):
    """`record` as indented JSON at `path`, atomically; values JSON cannot hold are written as str."""
    return write_file_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, default=str)))


def save_folder_atomically(final, write):
    """Call write(tmp_folder), then put the finished folder in place of `final`; if write fails, the
    temporary folder is removed and `final` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
