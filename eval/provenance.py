"""Where a results file came from: the code (the anyref package's version, and its git commit with whether the
checkout had uncommitted changes), the libraries that ran it, and the model (a hash of its config.json, the device
and dtype it ran on), so that a figure can be traced back to what produced it.

    {"anyref": "0.1.0", "git_commit": "ab8086b...", "git_dirty": false, "torch": "2.4.1", "transformers": "4.44.2",
     "model_config_sha256": "3f1c...", "device": "cuda:0", "dtype": "torch.bfloat16"}

A field that cannot be known is None (the package installed from a wheel has no commit; a model given by a name
that is no directory has no config to hash); finding the provenance never fails a run.
"""
from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

__all__ = ["run_provenance"]

_GIT_TIMEOUT_S = 10


def run_provenance(model: Optional[str | Path] = None, loaded_model: object = None) -> dict:
    """The provenance block of a results file. model: the model's directory or shipped name, as recorded in the
    results; loaded_model: the model object that ran (anything with ``device`` and ``dtype``), when the caller has
    one."""
    import anyref

    commit, dirty = _git_state(Path(anyref.__file__).resolve().parent)
    return {
        "anyref": _version("anyref"), "git_commit": commit, "git_dirty": dirty,
        "torch": _version("torch"), "transformers": _version("transformers"),
        "model_config_sha256": _config_sha256(model),
        "device": _text_attribute(loaded_model, "device"), "dtype": _text_attribute(loaded_model, "dtype"),
    }


def _version(distribution: str) -> Optional[str]:
    """The installed version of ``distribution``, read from its metadata (nothing is imported); None when absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git(folder: Path, *args: str) -> Optional[str]:
    """``git -C folder ARGS``'s output, or None when git is missing, fails or hangs."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _git_state(package_dir: Path) -> tuple[Optional[str], Optional[bool]]:
    """(commit, has uncommitted changes) of the checkout ``package_dir`` is tracked in; (None, None) otherwise."""
    # The package's own file must be tracked: a copy installed into a virtual environment that sits, ignored, inside
    # some repository would otherwise report that repository's commit.
    if _git(package_dir, "ls-files", "--error-unmatch", "__init__.py") is None:
        return None, None
    commit = _git(package_dir, "rev-parse", "HEAD")
    status = _git(package_dir, "status", "--porcelain")  # the whole work tree, untracked files included
    return (commit.strip() or None) if commit else None, None if status is None else bool(status.strip())


def _config_sha256(model: Optional[str | Path]) -> Optional[str]:
    """sha256 of the model directory's config.json (the weights, gigabytes, are not hashed); None when ``model``
    names no directory with one."""
    if model is None:
        return None
    from anyref.checkpoint import CONFIG_NAME, resolve_model_path

    try:
        config = resolve_model_path(model) / CONFIG_NAME
        return hashlib.sha256(config.read_bytes()).hexdigest()
    except (OSError, ValueError):  # no such directory or shipped name, no config in it, an unreadable file
        return None


def _text_attribute(obj: object, name: str) -> Optional[str]:
    value = getattr(obj, name, None)
    return None if value is None else str(value)
