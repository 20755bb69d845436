"""Finding a release from what the user typed after `--model`.

    (nothing)          the shipped default, weights/qm9
    qm9                a name: weights/qm9
    ./runs/x, /abs/x   a local release directory
    org/name[@rev]     a Hugging Face Hub model repo (a branch, tag or commit after @)

`weights/` is the directory next to the package (a source checkout ships its models there);
the SYMDIFF_WEIGHTS environment variable points elsewhere. Hub downloads go into the standard
Hugging Face cache, so HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE=1 work
as for any Hugging Face tool; `offline=True` (--offline) uses the cache only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import symdiff_cli
from symdiff_cli.errors import SymdiffError

DEFAULT_MODEL_NAME = "qm9"
WEIGHTS_ENV_VAR = "SYMDIFF_WEIGHTS"

# The files a release consists of (engine/release.py); only these are fetched from the Hub.
_RELEASE_WEIGHTS = "model.safetensors"
_RELEASE_CONFIG = "config.json"
_RELEASE_CARD = "README.md"
_RELEASE_GUIDE = "guide.safetensors"  # only in releases with a guide model (format version 2)
_RELEASE_MORE_GUIDES = "guide-*.safetensors"  # guide-2, guide-3, ...: a guide of several networks (version 3)
_RELEASE_METRICS = "metrics.json"  # the measured results the model card shows, when the release has them
HUB_ALLOW_PATTERNS = [_RELEASE_WEIGHTS, _RELEASE_CONFIG, _RELEASE_CARD, _RELEASE_GUIDE, _RELEASE_MORE_GUIDES,
                      _RELEASE_METRICS]

# owner/name as the Hub spells repo ids, optionally @revision (branch, tag or commit).
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<revision>[^\s@]+))?$")
_BARE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def weights_dir() -> Path:
    """The directory of named releases: $SYMDIFF_WEIGHTS, else weights/ next to the package."""
    override = os.environ.get(WEIGHTS_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path(symdiff_cli.__file__).resolve().parents[1] / "weights"


def available_models() -> list[str]:
    """Names of the releases in weights_dir() (directories with a config.json)."""
    root = weights_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / _RELEASE_CONFIG).is_file())


def _available_text() -> str:
    names = available_models()
    where = weights_dir()
    if not names:
        return f"no models are installed in {where}"
    return f"available in {where}: {', '.join(names)}"


def _check_release_dir(path: Path, spec: str) -> Path:
    missing = [name for name in (_RELEASE_WEIGHTS, _RELEASE_CONFIG) if not (path / name).is_file()]
    if missing:
        hint = ""
        if (path / "checkpoint.pt").is_file():
            checkpoint = path / "checkpoint.pt"
            hint = f"; it holds a training checkpoint: export it with `symdiff convert {checkpoint} weights/NAME/`"
        raise SymdiffError(f"model {spec!r} ({path}) is not a symdiff release: {', '.join(missing)} missing{hint}")
    return path


def _local_path(spec: str) -> Path | None:
    """The release directory a local path names, None when nothing exists there."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _check_release_dir(path, spec)
    if path.is_file():
        if path.name in (_RELEASE_WEIGHTS, _RELEASE_CONFIG, _RELEASE_CARD):
            return _check_release_dir(path.parent, spec)
        if path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
            raise SymdiffError(
                f"{spec} is a torch file; symdiff only loads release directories (safetensors). "
                f"Export a training checkpoint with `symdiff convert {spec} weights/NAME/`"
            )
        raise SymdiffError(f"{spec} is a file, not a release directory")
    return None


def resolve_model(spec: str | None, offline: bool = False, show_progress: bool = True) -> Path:
    """The local directory of the release `spec` names, downloading a Hub repo if needed."""
    if spec is not None and not spec.strip():
        # Most often an unset shell variable ("$MODEL"): silently taking the default would hide it.
        raise SymdiffError("the model name is empty: give a name in weights/, a release directory or a Hub id "
                           "(org/name), or leave the option out for the default model")
    if spec is None:
        default = weights_dir() / DEFAULT_MODEL_NAME
        if not default.is_dir():
            raise SymdiffError(
                f"no default model: {default} does not exist; pass --model "
                f"(a name in weights/, a release directory or a Hub id org/name), or set {WEIGHTS_ENV_VAR}"
            )
        return _check_release_dir(default, DEFAULT_MODEL_NAME)
    spec = spec.strip()
    if _BARE_NAME.match(spec) and spec not in (".", ".."):
        named = weights_dir() / spec
        if named.is_dir():
            return _check_release_dir(named, spec)
        local = _local_path(spec)
        if local is not None:
            return local
        raise SymdiffError(f"unknown model {spec!r}: {_available_text()}")
    local = _local_path(spec)
    if local is not None:
        return local
    match = _HUB_ID.match(spec)
    if match is None or spec.startswith((".", "/", "~")):
        raise SymdiffError(f"no model at {spec!r}: no such directory, and not a Hub id (org/name[@revision])")
    return download_from_hub(match.group("repo"), match.group("revision"), offline=offline,
                             show_progress=show_progress)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _network_reason(err: BaseException) -> str:
    """The underlying connection problem of a huggingface_hub error, in one line."""
    cause = err.__cause__ or err.__context__
    while cause is not None and (cause.__cause__ or cause.__context__) is not None and not str(cause).strip():
        cause = cause.__cause__ or cause.__context__
    source = cause if cause is not None else err
    return f"{type(source).__name__}: {_first_line(source)}"


def _is_http_client_error(err: BaseException, class_name: str) -> bool:
    """Whether err is an instance of `class_name` ("TransportError", "TimeoutException") of the HTTP
    client huggingface_hub uses (httpx or a fork)."""
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        error_class = getattr(module, class_name, None)
        if error_class is not None and isinstance(err, error_class):
            return True
    return False


def _hub_answers(repo_id: str, revision: str | None, timeout: float) -> bool:
    """Whether the Hub answers a request about the repo within `timeout` seconds (any answer,
    an error status included). snapshot_download's first request has no time limit, so a server
    that accepts the connection and never replies would hold `generate` forever."""
    from urllib.parse import quote

    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    url = f"{constants.ENDPOINT}/api/models/{repo_id}"
    if revision:
        url += f"/revision/{quote(revision, safe='')}"
    try:
        get_session().get(url, timeout=timeout)
    except Exception as err:  # other failures are snapshot_download's to report, as before
        return not _is_http_client_error(err, "TimeoutException")
    return True


def download_from_hub(repo_id: str, revision: str | None = None, offline: bool = False,
                      show_progress: bool = True) -> Path:
    """snapshot_download of a release repo into the Hugging Face cache; returns the snapshot dir."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub_errors
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    endpoint = constants.ENDPOINT
    offline_env = bool(getattr(constants, "HF_HUB_OFFLINE", False))
    local_only = offline or offline_env
    name = f"{repo_id}@{revision}" if revision else repo_id
    # The library's limit for metadata requests (HF_HUB_ETAG_TIMEOUT, 10 s unless set).
    answer_timeout = float(getattr(constants, "HF_HUB_ETAG_TIMEOUT", 10))
    unanswered = not local_only and not _hub_answers(repo_id, revision, answer_timeout)
    restore_bars = not show_progress and not are_progress_bars_disabled()
    if restore_bars:
        disable_progress_bars()
    try:
        snapshot = snapshot_download(
            repo_id, repo_type="model", revision=revision, allow_patterns=HUB_ALLOW_PATTERNS,
            local_files_only=local_only or unanswered,  # a silent Hub: the cached copy, if any
        )
    except hub_errors.RevisionNotFoundError:
        raise SymdiffError(f"revision {revision!r} not found in Hub model {repo_id} ({endpoint})") from None
    except hub_errors.GatedRepoError:
        raise SymdiffError(f"Hub model {repo_id} is gated: accept its terms on {endpoint} and log in (HF_TOKEN)") from None
    except hub_errors.RepositoryNotFoundError:
        raise SymdiffError(
            f"Hub model {repo_id} not found on {endpoint} (a private repo needs `hf auth login` or HF_TOKEN)"
        ) from None
    except hub_errors.LocalEntryNotFoundError as err:
        if unanswered:
            raise SymdiffError(
                f"cannot download Hub model {name}: {endpoint} did not answer within {answer_timeout:g} s and the "
                "model is not cached (HF_HUB_ETAG_TIMEOUT sets how long to wait)") from None
        if local_only:
            why = "--offline" if offline else "HF_HUB_OFFLINE=1"
            raise SymdiffError(
                f"Hub model {name} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                f"offline mode is on ({why}): run once with network access to download it"
            ) from None
        raise SymdiffError(
            f"cannot download Hub model {name} from {endpoint} and it is not cached ({_network_reason(err)})"
        ) from None
    except hub_errors.HFValidationError as err:
        raise SymdiffError(f"{name!r} is not a valid Hub repo id: {_first_line(err)}") from None
    except hub_errors.HfHubHTTPError as err:
        raise SymdiffError(f"the Hub ({endpoint}) refused Hub model {name}: {_first_line(err)}") from None
    except Exception as err:
        # Connection errors during the file transfers reach us unwrapped (OSError, or the
        # HTTP client's own TransportError classes); anything else is a bug and propagates.
        if not isinstance(err, OSError) and not _is_http_client_error(err, "TransportError"):
            raise
        raise SymdiffError(f"cannot download Hub model {name} from {endpoint}: {_first_line(err)}") from None
    finally:
        if restore_bars:
            enable_progress_bars()
    path = Path(snapshot)
    missing = [f for f in (_RELEASE_WEIGHTS, _RELEASE_CONFIG) if not (path / f).is_file()]
    if missing:
        raise SymdiffError(f"Hub model {name} is not a symdiff release: {', '.join(missing)} missing")
    return path


__all__ = ["DEFAULT_MODEL_NAME", "WEIGHTS_ENV_VAR", "HUB_ALLOW_PATTERNS", "weights_dir", "available_models",
           "resolve_model", "download_from_hub"]
