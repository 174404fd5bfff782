"""Promotion after an A/B experiment: the treatment becomes `champion` once it has run.

    hllm ab promote --ab-config configs/ab/hllm-rollout.yaml

With `gate.promote: after_experiment` the gate only approves a challenger (the version
tags `gate.approved=true`, `gate.experiment`, `gate.approved_against`): the experiment's
control arm is `@champion`, and moving it first would serve one model in both arms. When
the readout of the last ramp stage says to end the experiment, this moves `champion` to
the treatment arm's version and `previous-champion` to the old champion, under the
gate's registry lock and with its both-or-neither write, so a gate or rollback running
at the same time acts before or after it, never between.

It refuses, naming the version and what to do, unless
- the gate approved that version for this experiment against the champion that is
  serving control now: a version never gated, refused, approved for another experiment
  or against a champion since replaced was not judged against what it would replace;
- the newest readout of the experiment logged to MLflow (`hllm ab readout` with a
  tracking URI) says to end it, and measured that version in the treatment arm: the gate
  judged offline metrics, the readout judged users. `--without-readout` skips this check
  for an experiment read out elsewhere; the promotion tag then says so.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from hllm import tracking
from hllm.errors import ConfigError
from hllm.experiment import ABConfig, load_ab_config
from hllm.online.readout import READOUT_EXPERIMENT
from hllm.gate import (APPROVED_AGAINST_TAG, APPROVED_TAG, CHAMPION, EXPERIMENT_TAG,
                       promote_aliases, registry_lock, resolve_version)

log = logging.getLogger(__name__)

PROMOTED_TAG = "gate.promoted_after_experiment"  # on the version: which experiment, when


@dataclass(frozen=True)
class Promotion:
    model: str
    version: str  # the treatment, now champion
    previous: str  # the champion it replaced, now previous-champion
    experiment: str


def promote_treatment(ab_config: str | Path, tracking_uri: str | None = None,
                      without_readout: bool = False) -> Promotion:
    """Move `champion` to the experiment's treatment if the gate approved it and the newest
    readout says to end the experiment; else refuse."""
    from mlflow.tracking import MlflowClient

    cfg = load_ab_config(ab_config)
    client = MlflowClient(tracking.registry_uri(tracking_uri))
    name = cfg.model
    # Read, check and move under one lock: a gate between the check and the move could
    # replace the champion the approval was judged against.
    with registry_lock(client, name):
        version = treatment_version(client, cfg)
        champion = resolve_version(client, name, CHAMPION)
        check_approval(cfg, version, client.get_model_version(name, version).tags, champion)
        if without_readout:
            log.warning("ab promote: %s version %s promoted without reading the readout "
                        "(--without-readout)", name, version)
        else:
            check_readout(cfg, version, latest_readout(client, cfg))
        promote_aliases(client, name, version, champion)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        how = " (without a readout)" if without_readout else ""
        client.set_model_version_tag(name, version, PROMOTED_TAG, f"{cfg.name} at {now}{how}")
    log.info("ab promote: %s champion %s -> %s after experiment %s", name, champion, version,
             cfg.name)
    return Promotion(name, version, str(champion), cfg.name)


def treatment_version(client, cfg: ABConfig) -> str:
    """The version the treatment arm serves: its pinned version, or its alias resolved."""
    ref = cfg.treatment
    version = resolve_version(client, cfg.model, str(ref.version) if ref.version else ref.alias)
    if version is None:
        raise ConfigError(f"{cfg.source}: the treatment's alias @{ref.alias} is not set on model "
                          f"{cfg.model!r}; nothing to promote")
    return version


def check_approval(cfg: ABConfig, version: str, tags: dict[str, str], champion: str | None) -> None:
    """Refuse, in one line, unless the gate approved `version` for this experiment against
    `champion` (pure: the tags are read by the caller)."""
    who = f"{cfg.model} version {version} (the treatment of {cfg.source})"
    regate = f"`hllm gate --challenger {version} --ab-config {cfg.source}`"
    if version == champion:
        raise ConfigError(f"{who} is already the champion; nothing to promote")
    if champion is None:
        raise ConfigError(f"model {cfg.model!r} has no champion: there was no control to "
                          f"experiment against; gate the treatment with {regate}")
    decision = tags.get("gate.decision")
    if decision is None:
        raise ConfigError(f"{who} was never gated; only a version the gate approved is "
                          f"promoted: run {regate} first")
    if tags.get(APPROVED_TAG) != "true":
        raise ConfigError(f"{who}: the gate {decision} it (its gate.reasons tag says why); "
                          "only a version the gate approved is promoted")
    if tags.get(EXPERIMENT_TAG) != cfg.name:
        raise ConfigError(f"{who} was approved for experiment {tags.get(EXPERIMENT_TAG)!r}, not "
                          f"{cfg.name!r}; gate it with this config: {regate}")
    against = tags.get(APPROVED_AGAINST_TAG)
    if against != champion:
        raise ConfigError(f"{who} was approved against champion version {against}, but champion "
                          f"is now version {champion}; gate it again: {regate}")


def latest_readout(client, cfg: ABConfig):
    """The newest readout run of this experiment on this model (`hllm ab readout`), or None."""
    holder = client.get_experiment_by_name(READOUT_EXPERIMENT)
    if holder is None:
        return None

    def quoted(value: str) -> str:
        return "'" + value.replace("'", "\\'") + "'"

    runs = client.search_runs(
        [holder.experiment_id],
        filter_string=(f"tags.`ab.experiment` = {quoted(cfg.name)} and "
                       f"tags.`ab.model` = {quoted(cfg.model)}"),
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def check_readout(cfg: ABConfig, version: str, run) -> None:
    """Refuse, in one line, unless the newest readout `run` says to end the experiment
    with `version` as the treatment it measured (pure: the run is read by the caller)."""
    readout_cmd = f"`hllm ab readout --ab-config {cfg.source} --exposure-log LOG`"
    if run is None:
        raise ConfigError(f"no readout of experiment {cfg.name!r} in MLflow (experiment "
                          f"{READOUT_EXPERIMENT!r}): run {readout_cmd} with the tracking URI "
                          "set, or pass --without-readout if it was read out elsewhere")
    tags = run.data.tags
    when = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.timezone.utc
                                     ).isoformat(timespec="seconds")
    which = f"the newest readout of {cfg.name} (run {run.info.run_id}, {when})"
    if tags.get("ab.ends_experiment") != "true":
        raise ConfigError(f"{which} says {tags.get('ab.decision', '?').upper()}, not to end the "
                          f"experiment (next step: {tags.get('ab.next_step', '?')}); promote "
                          "after a readout of the last ramp stage says to end it")
    measured = tags.get("ab.treatment.versions", "")
    if measured != version:
        raise ConfigError(f"{which} measured treatment version(s) {measured or 'none'}, not "
                          f"version {version}; read out the experiment that served it")
