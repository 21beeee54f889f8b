"""Opening a meta-training run: a new folder or a resumed one (config diff, claim, checkpoint),
the data, the device resolved once and placed for this process, the learner and its chunk sizes,
and, under torchrun, rank 0's plan sent to the other processes."""

from __future__ import annotations

import difflib
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from metafew import distributed
from metafew.budget import check_fits
from metafew.checkpoints import MetaCheckpoint, load_resume_checkpoint
from metafew.config import Config
from metafew.config_load import (
    dump_yaml,
    from_dict,
    load_config,
    merge,
    parse_overrides,
    parse_yaml,
    to_dict,
    upgrade_saved,
    valid_keys,
)
from metafew.data import FewShotData, Splits, load_data
from metafew.data.download import Progress as DownloadProgress
from metafew.distributed import Group
from metafew.engine import training_samplers
from metafew.errors import ConfigError, MetafewError, RunError
from metafew.files import write_json
from metafew.learner import Learner, build_learner
from metafew.runs import (
    RESUMABLE_KEYS,
    RunClaim,
    config_diff,
    create_run,
    discard_partial_writes,
    find_resumable,
    load_run_config,
    record_resume,
    resolve_run,
)
from metafew.system import resolve_device, set_threads

Note = Callable[[str], None]
"""note(line): a one-line remark for the user (a fallback checkpoint, the run --resume auto found)."""


class ReportedByRankZero(MetafewError):
    """Rank 0 stopped (an error before training, a signal, divergence) and said why; the other
    processes exit with the same code and say nothing."""

    def __init__(self, code: int) -> None:
        super().__init__("")
        self.exit_code = code


@dataclass(frozen=True)
class TrainRequest:
    """What `metafew train` was asked for: config file, overrides, --resume, --allow-change."""

    config: list[str] | None
    overrides: list[str]
    resume: str | None
    allowed: frozenset[str]

    def __post_init__(self) -> None:
        if self.allowed and self.resume is None:
            raise ConfigError("--allow-change only applies with --resume RUN; drop it or add --resume")
        keys = valid_keys()
        for key in sorted(self.allowed):
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}?" if close else "see `metafew config --keys`"
                raise ConfigError(f"--allow-change {key}: no such config key; {hint}")

    def new_config(self) -> Config:
        return load_config(self.config, self.overrides)


@dataclass(frozen=True)
class Launch:
    """A run ready to train: its config, folder, the checkpoint it continues from (None: the
    start), its data and this process's learner (on the placed device, chunk sizes decided)."""

    cfg: Config
    run: Path
    resume: MetaCheckpoint | None
    data: FewShotData
    learner: Learner
    fresh: bool = False
    """Whether this process created the run folder (a new run, not a resumption)."""


@contextmanager
def discard_if_unsaved(launch: Launch, group: Group) -> Iterator[None]:
    """Around training: a new run that fails before its first checkpoint (divergence at once, an
    error, a signal) takes its folder with it, so a refused run leaves no folder behind."""
    try:
        yield
    except BaseException:
        checkpoints = launch.run / "checkpoints"
        if launch.fresh and group.is_main and not any(checkpoints.glob("*.pt")):
            shutil.rmtree(launch.run, ignore_errors=True)
        raise


def recorded_split(run: Path | None) -> Splits | None:
    """The class lists a run was trained with (its data.json), if it recorded them."""
    path = None if run is None else run / "data.json"
    if path is None or not path.is_file():
        return None
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))["classes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{str(path)!r} is unreadable ({exc}); restore it from a backup") from None
    return {split: list(names) for split, names in classes.items()}


def load_run_data(
    cfg: Config, run: Path | None = None, progress: DownloadProgress | None = None
) -> FewShotData:
    """The configured dataset; with `run`, the split that run recorded."""
    return load_data(cfg.data, recorded_split(run), progress)


def resume_config(run: Path, request: TrainRequest) -> Config:
    """The run's saved config, with only RESUMABLE_KEYS and --allow-change keys allowed to change."""
    saved = load_run_config(run)
    if not request.config and not request.overrides:
        return saved
    base = to_dict(saved) if not request.config else to_dict(load_config(request.config))
    wanted = from_dict(merge(base, parse_overrides(request.overrides)))
    diff = config_diff(to_dict(saved), to_dict(wanted))
    blocked = [d for d in diff if d[0] not in RESUMABLE_KEYS | request.allowed]
    if blocked:
        key, old, new = blocked[0]
        raise ConfigError(
            f"--resume with a changed config: {key} was {old!r}, now {new!r}; "
            f"only {', '.join(sorted(RESUMABLE_KEYS))} may change (start a new run instead, "
            f"or pass --allow-change {key} to continue with the new value, inexactly)"
        )
    return wanted


def open_run(
    request: TrainRequest, claim: RunClaim, note: Note
) -> tuple[Config, Path | None, MetaCheckpoint | None]:
    """(config, run folder to continue or None for a new run, checkpoint to resume from)."""
    resume = request.resume
    if resume == "auto":
        found = find_resumable(request.new_config(), request.allowed)
        if found is None:
            return request.new_config(), None, None
        note(f"--resume auto: continuing {found}")
        resume = str(found)
    if resume is None:
        return request.new_config(), None, None
    run = resolve_run(resume)
    cfg = resume_config(run, request)
    claim.acquire(run)
    discard_partial_writes(run)
    state, remark = load_resume_checkpoint(run)
    if remark:
        note(f"warning: {remark}")
    if state is not None:
        check_own_checkpoint(run, state, request.allowed)
    return cfg, run, state  # config.yaml changes with the first checkpoint of `cfg` (engine)


def check_own_checkpoint(run: Path, state: MetaCheckpoint, allowed: frozenset[str]) -> None:
    """RunError unless the checkpoint was written with this run's config (RESUMABLE_KEYS and the
    --allow-change keys aside): a last.pt copied from another run is refused, not continued."""
    source = run / "checkpoints" / "last.pt"
    try:
        written = to_dict(from_dict(upgrade_saved(state.config)))
    except ConfigError as exc:
        raise RunError(f"checkpoint in {str(run)!r} holds an unusable config ({exc})") from None
    for key, old, new in config_diff(to_dict(load_run_config(run)), written):
        if key not in RESUMABLE_KEYS | allowed:
            raise RunError(
                f"checkpoint {str(source)!r} was written with {key} = {new!r} but the run's config.yaml "
                f"says {old!r}: it belongs to another run; restore this run's own checkpoint"
            )


def _learner(cfg: Config, group: Group, data: FewShotData) -> Learner:
    """This process's learner, on runtime.device resolved once and placed (one GPU per process)."""
    set_threads(cfg.runtime.threads)
    device = group.place(resolve_device(cfg.runtime.device))
    return build_learner(cfg, device, len(data.meta_train.classes))


def _prepare_main(
    request: TrainRequest, claim: RunClaim, group: Group, note: Note, progress: DownloadProgress | None
) -> Launch:
    """Rank 0 (or the only process): the config, a claimed run folder, the checkpoint, the data.
    Config and data are checked before a new folder is made, so a refused run leaves no folder."""
    cfg, run, state = open_run(request, claim, note)
    distributed.check_meta_batch(cfg.train.meta_batch_size, group.world_size)
    check_fits(cfg)
    data = load_run_data(cfg, run, progress)
    training_samplers(cfg, data)
    learner = _learner(cfg, group, data)
    plan = {**learner.chunks.record(), "processes": group.world_size}
    fresh = run is None
    if run is None:
        run = create_run(cfg, str(learner.device), claim, plan)
    else:
        record_resume(run, str(learner.device), plan)
    if not (run / "data.json").is_file():
        write_json(run / "data.json", data.provenance)
    return Launch(cfg, run, state, data, learner, fresh)


def prepare(
    group: Group, request: TrainRequest, claim: RunClaim, note: Note, progress: DownloadProgress | None = None
) -> Launch:
    """The run this process trains: rank 0 opens it (`_prepare_main`) and sends the outcome (run
    folder, config, or its error's exit code) to the other processes, which load the data and the
    same checkpoint themselves."""
    if group.is_main:
        try:
            launch = _prepare_main(request, claim, group, note, progress)
        except MetafewError as exc:
            distributed.send_plan(group, {"error": exc.exit_code})
            raise
        iteration = -1 if launch.resume is None else launch.resume.iteration
        sent = {"run": str(launch.run), "config": dump_yaml(launch.cfg), "iteration": iteration}
        distributed.send_plan(group, sent)
        return launch
    plan = distributed.send_plan(group, {})
    if "error" in plan:
        raise ReportedByRankZero(int(plan["error"]))
    cfg, run = from_dict(parse_yaml(plan["config"], "rank 0's config")), Path(plan["run"])
    state = load_resume_checkpoint(run)[0] if plan["iteration"] >= 0 else None
    if plan["iteration"] != (-1 if state is None else state.iteration):
        raise RunError(
            f"rank {group.rank} does not see rank 0's checkpoint in {str(run)!r}: use a shared folder"
        )
    data = load_data(cfg.data, recorded_split(run))  # the split rank 0 recorded
    return Launch(cfg, run, state, data, _learner(cfg, group, data))
