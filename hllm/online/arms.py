"""The model behind each arm of an experiment, loaded once and swapped whole when the registry moves.

An A/B config names each arm's model as a registry alias (`champion`, `challenger`) or a
pinned version. The server resolves each alias to a version, loads that version (by
number, never by alias, so the version it reports is the one it runs), and keeps the
arms as one immutable snapshot. `refresh()` re-resolves the aliases; when one moved, the
new version is loaded *beside* the old one while the old keeps answering, and only then
is the snapshot replaced, with a single reference assignment. A request reads the
snapshot once, so it is answered wholly by the old models or wholly by the new.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# Imported here, in the main thread, not lazily in the loader thread: CPython 3.11 can
# fail an import that compiles code while another thread does ("AST constructor
# recursion depth mismatch"), and the server imports its web stack at the same time.
import mlflow.pyfunc
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models.model import MLMODEL_FILE_NAME as MLMODEL_FILE
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from hllm import gate, tracking
from hllm.errors import ConfigError
from hllm.experiment import ABConfig

log = logging.getLogger(__name__)

SERVING_ARMS = ("control", "treatment")  # holdout and outside users are served control


@dataclass(frozen=True)
class ServedModel:
    """One loaded registry version and what requests report about it."""

    name: str
    version: str
    ref: str  # what the A/B config names: "@champion" or "version 3"
    predictor: Any  # the pyfunc's Python model (HLLMRecommender or MSRScorer)


def resolve_version(name: str, ref) -> str:
    """The registry version an arm names now: its alias resolved, or its pinned version checked."""
    uri = tracking.registry_uri()
    wanted = str(ref.version) if ref.version is not None else ref.alias
    version = gate.resolve_version(MlflowClient(uri), name, wanted)
    if version is None:
        raise ConfigError(f"registered model {name!r} has no alias {ref.alias!r}; "
                          "`hllm register` sets challenger, `hllm gate` champion")
    return str(version)


def download_version(name: str, version: str, dst: Path) -> Path:
    """A registered version's files into `dst`, without the copy of the code it ships.

    A pyfunc version carries a copy of `hllm` (about 75 small files) for hosts that lack
    it. This server runs `hllm` already, and Python would import its own modules before
    the copy anyway, so fetching the copy only costs: one request per file through the
    tracking server, on the same cores as the live arms, during a swap. Everything else
    at the top of the model (MLmodel, the pickled model, its artifacts, its requirements)
    is fetched, so a new kind of file does not need a change here.
    """
    uri = tracking.registry_uri()
    source = MlflowClient(uri).get_model_version_download_uri(name, version)
    repo = get_artifact_repository(source)
    dst.mkdir(parents=True, exist_ok=True)
    mlmodel = Path(repo.download_artifacts(MLMODEL_FILE, str(dst)))
    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("python_function", {})
    skip = {MLMODEL_FILE, flavor.get("code")}
    for entry in repo.list_artifacts():
        if entry.path not in skip:
            repo.download_artifacts(entry.path, str(dst))
    return dst


def load_version(name: str, version: str) -> Any:
    """The Python model inside the pyfunc registered as `name` version `version`.

    The files are fetched into a temporary directory that is gone once the model is
    built: every loader reads its artifacts into memory (safetensors, ONNX Runtime's
    session, the catalog index), so nothing is left behind per swap.
    """
    uri = f"models:/{name}/{version}"
    tmp = tempfile.mkdtemp(prefix="hllm-serve-load-")
    try:
        local = download_version(name, version, Path(tmp))
        return mlflow.pyfunc.load_model(local.as_posix()).unwrap_python_model()
    except MlflowException as exc:
        raise ConfigError(f"{uri}: cannot load the model "
                          f"({exc.message.splitlines()[0]})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        # The pyfunc loader puts the version's code directory in front of sys.path; it was
        # never fetched and is gone now: without this, every swap would leave an entry.
        sys.path[:] = [entry for entry in sys.path if not entry.startswith(tmp)]


class ArmModels:
    """`current()`: {arm: ServedModel} for control and treatment, replaced atomically."""

    def __init__(self, cfg: ABConfig,
                 resolve: Callable[[str, Any], str] = resolve_version,
                 load: Callable[[str, str], Any] = load_version) -> None:
        self.cfg = cfg
        self._resolve = resolve
        self._load = load
        self._snapshot: dict[str, ServedModel] = {}
        self._lock = threading.Lock()  # one refresh at a time (poller and admin endpoint)
        self.swaps = 0

    def current(self) -> dict[str, ServedModel]:
        return self._snapshot

    @property
    def ready(self) -> bool:
        return all(arm in self._snapshot for arm in SERVING_ARMS)

    def refresh(self) -> list[str]:
        """Load what the registry names now; returns one line per arm that changed."""
        with self._lock:
            old = self._snapshot
            wanted = {arm: self._resolve(self.cfg.model, self.cfg.arm_ref(arm))
                      for arm in SERVING_ARMS}
            loaded = {m.version: m.predictor for m in old.values()}
            for version in sorted(set(wanted.values()) - set(loaded)):
                log.info("loading %s version %s", self.cfg.model, version)
                loaded[version] = self._load(self.cfg.model, version)
            new = {arm: ServedModel(self.cfg.model, version, str(self.cfg.arm_ref(arm)),
                                    loaded[version])
                   for arm, version in wanted.items()}
            changes = [f"{arm}: {self.cfg.model} {old[arm].version if arm in old else '-'} -> "
                       f"{new[arm].version}" for arm in SERVING_ARMS
                       if arm not in old or old[arm].version != new[arm].version]
            self._snapshot = new  # the swap: one reference assignment
            if changes:
                self.swaps += bool(old)
                log.info("serving %s", "; ".join(changes))
            return changes

    def poll(self, interval: float, stop: threading.Event) -> threading.Thread:
        """Refresh every `interval` seconds until `stop` is set; a failed poll keeps the old models."""
        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.refresh()
                except Exception as exc:  # noqa: BLE001 - the server keeps answering with what it has
                    log.error("registry poll failed, still serving %s: %s",
                              {a: m.version for a, m in self._snapshot.items()},
                              str(exc).splitlines()[0][:300])

        thread = threading.Thread(target=loop, name="registry-poll", daemon=True)
        thread.start()
        return thread
